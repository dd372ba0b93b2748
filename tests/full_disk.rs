//! The disk holding the outbox fills up (a small tmpfs, filled by the outbox itself and by a
//! filler file): producers are told `full`, never acknowledged for something not stored; the
//! daemon keeps delivering; once space is freed it accepts again; nothing acknowledged is lost.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edgehook::client::{Client, Reply};
use serde_json::json;

/// A tmpfs of `size` mounted on a new directory; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root) and returns `None`; under CI that panics.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir: at.to_owned() }),
            other => {
                let why = format!(
                    "cannot mount a tmpfs (needs root): {:?}",
                    other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                );
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("cannot run this test here: {why}");
                None
            }
        }
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills `path` until the file system says no (or `limit` bytes).
fn fill(path: &Path, limit: u64) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5Au8; 16 * 1024];
    let mut written = 0;
    while written < limit {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

/// What the producers saw.
#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    refused: Vec<(String, String)>,
}

/// One producer: `n` events of about 1 KiB, up to 16 in flight; every reply is recorded.
fn produce(socket: &Path, client: usize, n: usize, tally: &Mutex<Tally>) {
    let mut c = Client::connect(socket).expect("connect");
    let pad = "x".repeat(1000);
    let (mut sent, mut answered) = (0, 0);
    while answered < n {
        while sent < n && sent - answered < 16 {
            c.send(&json!({"type": "sensor.reading", "data": {"client": client, "n": sent, "pad": pad}}))
                .expect("send");
            sent += 1;
        }
        let reply = c.recv().expect("a reply for every request");
        answered += 1;
        let mut t = tally.lock().unwrap();
        match reply {
            Reply::Ok(v) => t.acked.push(v.id.expect("id")),
            Reply::Err { code, error } => t.refused.push((code, error)),
        }
    }
}

fn config_text(dir: &Path, disk: &Path, rest: &str) -> String {
    format!(
        "[storage]\npath = \"{}/outbox.db\"\n[ingest]\nsocket = \"{}/ingest.sock\"\n[inventory]\nbuiltin = false\nscripts_dirs = []\n{rest}",
        disk.display(),
        dir.display()
    )
}

/// A daemon whose outbox is on an 8 MiB tmpfs, delivering `sensor.*` events to `receiver`;
/// None where no tmpfs can be mounted (the mount says why, and fails under CI).
fn daemon_on_tmpfs(receiver: &Receiver) -> Option<(Setup, Tmpfs, Daemon)> {
    let setup = Setup::new("");
    let disk = Tmpfs::mount(&setup.dir.path().join("disk"), "8m")?;
    let sink = http_sink("cloud", &receiver.url(), SECRET, "events = [\"sensor.*\"]");
    std::fs::write(
        &setup.config,
        config_text(setup.dir.path(), &disk.dir, &sink),
    )
    .unwrap();
    let daemon = setup.start();
    Some((setup, disk, daemon))
}

#[test]
fn a_full_disk_refuses_new_events_keeps_delivering_and_accepts_again_once_space_is_freed() {
    let receiver = Receiver::start(Arc::new(|_, _| {
        std::thread::sleep(Duration::from_millis(2));
        Response::status(200)
    }));
    let Some((setup, disk, mut daemon)) = daemon_on_tmpfs(&receiver) else {
        return;
    };
    // Leave about 1 MiB for the outbox, so that 8 producers of 1 KiB events outrun the receiver.
    let filler = disk.dir.join("filler");
    fill(&filler, disk.free().saturating_sub(1024 * 1024));
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for client in 0..8 {
            let (socket, tally) = (setup.socket(), &tally);
            s.spawn(move || produce(&socket, client, 400, tally));
        }
    });
    let emitted = run(&setup.config, &["emit", "sensor.reading", "{}"]);
    let t = tally.into_inner().unwrap();
    let free_then = disk.free();
    eprintln!(
        "8 producers: {} acknowledged, {} refused, {free_then} bytes free at the end",
        t.acked.len(),
        t.refused.len()
    );
    assert!(!t.refused.is_empty(), "the disk never filled up");
    // How many fit before the disk filled depends on how the WAL grew; that some did shows
    // the refusals came from the full disk, not from a broken outbox.
    assert!(
        !t.acked.is_empty(),
        "no event was taken before the disk filled"
    );
    for (code, error) in &t.refused {
        assert_eq!(code, "full", "{error}");
        assert!(
            error.contains("disk") && error.contains("not stored"),
            "{error}"
        );
    }
    // `emit` on the full disk: the outbox is full (75), and it says why.
    let stderr = String::from_utf8_lossy(&emitted.stderr);
    if !emitted.status.success() {
        assert_eq!(emitted.status.code(), Some(75), "{stderr}");
        assert!(
            stderr.contains("disk holding the outbox is full"),
            "{stderr}"
        );
    }
    // Deliveries go on while the disk is still full.
    wait_until(Duration::from_secs(60), "every acknowledged event", || {
        let got: HashSet<String> = receiver.delivered_ids().into_iter().collect();
        t.acked.iter().all(|id| got.contains(id))
    });
    let log = daemon.log();
    // Logged when it fills, not for every refusal.
    let full_errors = log
        .lines()
        .filter(|l| l.starts_with("edgehook ERROR The disk holding the outbox"))
        .count();
    eprintln!("{full_errors} ERROR lines for the full disk");
    assert!((1..=5).contains(&full_errors), "{log}");
    assert!(!log.contains("transaction failed"), "{log}");
    // Space freed: every producer is taken again.
    std::fs::remove_file(&filler).unwrap();
    // Writes are tried again within a second of space coming back.
    let mut first = Vec::new();
    wait_until(Duration::from_secs(10), "an event accepted again", || {
        let mut c = Client::connect(&setup.socket()).expect("connect");
        match c.call(&json!({"type": "sensor.reading", "data": {"probe": true}})) {
            Ok(Reply::Ok(v)) => {
                first.push(v.id.unwrap());
                true
            }
            _ => false,
        }
    });
    let after = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for client in 0..8 {
            let (socket, after) = (setup.socket(), &after);
            s.spawn(move || produce(&socket, client, 50, after));
        }
    });
    let mut after = after.into_inner().unwrap();
    after.acked.extend(first);
    assert!(after.refused.is_empty(), "{:?}", &after.refused[..1]);
    wait_until(
        Duration::from_secs(60),
        "the events after freeing space",
        || {
            let got: HashSet<String> = receiver.delivered_ids().into_iter().collect();
            after.acked.iter().all(|id| got.contains(id))
        },
    );
    // The deliveries the full disk could not record are recorded once it has room.
    wait_until(Duration::from_secs(30), "nothing pending", || {
        setup.sink_status("cloud")["pending"] == 0
    });
    let duplicates = receiver.delivered_count()
        - receiver
            .delivered_ids()
            .into_iter()
            .collect::<HashSet<_>>()
            .len();
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!(
        "{} acknowledged in all, lost 0, {duplicates} delivered twice; daemon {peak}",
        t.acked.len() + after.acked.len()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_daemon_restarted_on_a_full_disk_starts_and_delivers_its_backlog() {
    let receiver = Receiver::start(Arc::new(|_, _| Response::status(503)));
    let Some((setup, disk, mut daemon)) = daemon_on_tmpfs(&receiver) else {
        return;
    };
    let tally = Mutex::new(Tally::default());
    produce(&setup.socket(), 0, 200, &tally);
    let acked = tally.into_inner().unwrap().acked;
    assert_eq!(acked.len(), 200);
    let filler = disk.dir.join("filler");
    fill(&filler, u64::MAX);
    assert_eq!(disk.free(), 0);
    // A power cut on the full disk, then the restart.
    daemon.restart();
    receiver.set_behaviour(Arc::new(|_, _| Response::status(200)));
    wait_until(Duration::from_secs(60), "the backlog delivered", || {
        let got: HashSet<String> = receiver.delivered_ids().into_iter().collect();
        acked.iter().all(|id| got.contains(id))
    });
    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(30), "nothing pending", || {
        setup.sink_status("cloud")["pending"] == 0
    });
    eprintln!("200 events kept over a restart on a full disk, lost 0");
}
