//! The built-in inventory attributes, read from files under a root directory (`/` on a device,
//! a fixture tree in tests) and from the kernel's address list, without spawning anything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::Attribute;

/// Interface name prefixes that never describe the device itself.
const SKIPPED_PREFIXES: [&str; 3] = ["docker", "veth", "br-"];

/// `ARPHRD_LOOPBACK` in `/sys/class/net/*/type`.
const ARPHRD_LOOPBACK: &str = "772";

/// One address of an interface, with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface.
    pub interface: String,
    /// The address.
    pub ip: IpAddr,
    /// The prefix length of its network.
    pub prefix: u32,
}

/// The built-in attributes of the host whose files are under `root`, with `addresses` as the
/// kernel lists them and `device_type` from the config when set.
pub fn collect(
    root: &Path,
    device_type: Option<&str>,
    addresses: &[Address],
) -> BTreeMap<String, Attribute> {
    let mut attrs = BTreeMap::new();
    let mut one = |name: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            attrs.insert(name.to_string(), Attribute::one(v));
        }
    };
    one("hostname", read_trimmed(root, "proc/sys/kernel/hostname"));
    one("kernel", read_trimmed(root, "proc/version"));
    one("cpu_model", cpu_model(root));
    one("mem_total_kB", mem_total_kb(root));
    one("os", os_name(root));
    one("rootfs_type", rootfs_type(root));
    one(
        "device_type",
        device_type.map(str::to_string).or_else(|| {
            ["var/lib/mender/device_type", "data/mender/device_type"]
                .iter()
                .find_map(|f| key_in_file(root, f, "device_type"))
        }),
    );
    one(
        "artifact_name",
        key_in_file(root, "etc/mender/artifact_info", "artifact_name"),
    );
    one(
        "edgehook_version",
        Some(env!("CARGO_PKG_VERSION").to_string()),
    );
    let interfaces = interfaces(root);
    for name in &interfaces {
        let mac = read_trimmed(root, &format!("sys/class/net/{name}/address"))
            .filter(|m| m.bytes().any(|b| b != b'0' && b != b':'));
        if let Some(mac) = mac {
            attrs.insert(format!("mac_{name}"), Attribute::one(mac));
        }
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            let values: Vec<String> = addresses
                .iter()
                .filter(|a| &a.interface == name && a.ip.is_ipv4() == v4)
                .map(|a| format!("{}/{}", a.ip, a.prefix))
                .collect();
            if !values.is_empty() {
                attrs.insert(format!("{family}_{name}"), Attribute::many(values, false));
            }
        }
    }
    if !interfaces.is_empty() {
        attrs.insert(
            "network_interfaces".into(),
            Attribute::many(interfaces, true),
        );
    }
    attrs
}

/// The device's network interfaces by name: loopback, docker*, veth* and br-* left out.
pub fn interfaces(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/net")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo" && !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .filter(|n| {
            read_trimmed(root, &format!("sys/class/net/{n}/type")).as_deref()
                != Some(ARPHRD_LOOPBACK)
        })
        .collect();
    names.sort();
    names
}

/// The primary MAC address as Mender's `mender-device-identity` picks it: the Ethernet-type
/// interface (`type` 1) with the lowest index, dummies and the skipped kinds left out.
pub fn primary_mac(root: &Path) -> Option<String> {
    interfaces(root)
        .into_iter()
        .filter(|n| !n.starts_with("dummy"))
        .filter(|n| read_trimmed(root, &format!("sys/class/net/{n}/type")).as_deref() == Some("1"))
        .filter_map(|n| {
            let index: u64 = read_trimmed(root, &format!("sys/class/net/{n}/ifindex"))?
                .parse()
                .ok()?;
            let mac = read_trimmed(root, &format!("sys/class/net/{n}/address"))?;
            Some((index, mac))
        })
        .filter(|(_, mac)| mac.bytes().any(|b| b != b'0' && b != b':'))
        .min()
        .map(|(_, mac)| mac)
}

/// Every address the kernel lists, by interface.
pub fn local_addresses() -> Vec<Address> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter_map(|a| {
        let address = a.address?;
        let netmask = a.netmask?;
        let (ip, prefix) =
            if let (Some(ip), Some(mask)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in()) {
                (IpAddr::V4(ip.ip()), mask.ip().to_bits().count_ones())
            } else if let (Some(ip), Some(mask)) =
                (address.as_sockaddr_in6(), netmask.as_sockaddr_in6())
            {
                (IpAddr::V6(ip.ip()), mask.ip().to_bits().count_ones())
            } else {
                return None;
            };
        Some(Address {
            interface: a.interface_name,
            ip,
            prefix,
        })
    })
    .collect()
}

fn read_trimmed(root: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

fn cpu_model(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("proc/cpuinfo")).ok()?;
    // x86 and 32-bit ARM say `model name`; MIPS says `cpu model`; older ARM kernels say
    // `Processor`; 64-bit ARM often says none of them, and `Hardware` names the SoC.
    ["model name", "cpu model", "Processor", "Hardware"]
        .iter()
        .find_map(|key| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

fn mem_total_kb(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// `PRETTY_NAME` of os-release, else `NAME` with `VERSION`.
fn os_name(root: &Path) -> Option<String> {
    let text = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|f| std::fs::read_to_string(root.join(f)).ok())?;
    let fields: BTreeMap<&str, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), unquote(v.trim())))
        .collect();
    if let Some(pretty) = fields.get("PRETTY_NAME").filter(|p| !p.is_empty()) {
        return Some(pretty.clone());
    }
    let name = fields.get("NAME")?;
    Some(match fields.get("VERSION") {
        Some(v) if !v.is_empty() => format!("{name} {v}"),
        _ => name.clone(),
    })
}

/// A shell-quoted os-release value, unquoted.
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_string();
    }
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The file system type of `/`: the last mount on `/` is the one in use.
fn rootfs_type(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("proc/mounts")).ok()?;
    text.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, mount, fstype) = (f.next()?, f.next()?, f.next()?);
        (mount == "/").then(|| fstype.to_string())
    })
}

/// The value of `key=value` in a Mender file such as `artifact_info`.
fn key_in_file(root: &Path, file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}
