//! Logging to a real systemd-journald: the daemon, with its stderr connected to the journal as
//! systemd connects a service's, writes structured fields that `journalctl -o json` reads back.
//!
//! journald runs in a mount namespace of its own with a tmpfs on /run, so the machine's journal
//! (if any) is untouched. That needs root; elsewhere the test says why it cannot run, and fails
//! in CI, which runs it as root.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const JOURNALD: &str = "/lib/systemd/systemd-journald";

fn can_run() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("it needs root to mount a tmpfs on /run in a new mount namespace".into());
    }
    for tool in ["unshare", "systemd-cat", "journalctl", "stat"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(format!("{tool} is not installed"));
        }
    }
    if !Path::new(JOURNALD).exists() {
        return Err(format!("{JOURNALD} is not installed (package systemd)"));
    }
    Ok(())
}

/// The command line that runs edgehook, with the test runner prefix when one is set.
fn edgehook_command() -> String {
    let bin = env!("CARGO_BIN_EXE_edgehook");
    match std::env::var("EDGEHOOK_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => format!("{r} {bin}"),
        _ => bin.to_string(),
    }
}

#[test]
fn structured_fields_reach_a_real_journal() {
    if let Err(why) = can_run() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the journald test must run in CI: {why}"
        );
        eprintln!("cannot run the journald test here: {why}");
        return;
    }
    let receiver = Receiver::ok();
    let setup = Setup::new(&format!(
        "[log]\nlevel = \"debug\"\n{}",
        http_sink("cloud", &receiver.url(), SECRET, "")
    ));
    let dir = setup.dir.path();
    let script = dir.join("journal.sh");
    // Bounded waits throughout: every loop gives up after about ten seconds.
    std::fs::write(
        &script,
        format!(
            r#"set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
{JOURNALD} &
journald=$!
i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
# As systemd does for a service: stderr is a journal stream, and JOURNAL_STREAM names it.
systemd-cat -t edgehook-test sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {edgehook} --config {config} run' &
daemon=$!
i=0; while ! {edgehook} --config {config} emit sensor.reading '{{"n":1}}' > {dir}/id 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
i=0; while ! {edgehook} --config {config} activity --json | grep -q delivered && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
kill -TERM $daemon 2>/dev/null || true
pkill -TERM -f "{config} run" || true
i=0; while pgrep -f "{config} run" > /dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
journalctl -o json --no-pager > {dir}/journal.json
kill $journald
"#,
            edgehook = edgehook_command(),
            config = setup.config.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the journal script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = std::fs::read_to_string(dir.join("id")).unwrap();
    let id = id.trim();
    assert!(!id.is_empty(), "the event was emitted");
    assert!(receiver.delivered_ids().contains(&id.to_string()));

    let journal = std::fs::read_to_string(dir.join("journal.json")).unwrap();
    let entries: Vec<Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| e["SYSLOG_IDENTIFIER"] == "edgehook")
        .collect();
    assert!(
        entries.iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.starts_with("edgehook 0."))),
        "the start-up line is in the journal: {journal}"
    );
    let delivered = entries
        .iter()
        .find(|e| e["EVENT_ID"] == id && e["SINK"] == "cloud")
        .unwrap_or_else(|| panic!("no entry with EVENT_ID={id} and SINK=cloud in {journal}"));
    assert_eq!(delivered["PRIORITY"], "6", "a delivery is logged at debug");
    assert_eq!(delivered["EVENT_TYPE"], "sensor.reading");
    assert_eq!(delivered["HTTP_STATUS"], "200");
    assert!(
        delivered["_TRANSPORT"] == "journal",
        "structured entries come over the native protocol, not the stream: {delivered}"
    );
    // Nothing went to the stream as plain text: stderr was recognised as the journal.
    assert!(
        !journal.contains("edgehook INFO"),
        "plain stderr lines reached the journal: {journal}"
    );
}
