//! What an acknowledgement rests on, with `durability = full`, seen in the daemon's own system
//! calls: an event is acknowledged only once a sync of the outbox's WAL that began after the
//! commit storing it has returned, and the WAL's name is synced into its directory before the
//! first acknowledgement. A power cut loses what was written and not synced, so this is what
//! keeps every acknowledged event through one, whoever makes the sync (SQLite inside the commit
//! with `synchronous = FULL` today, or any other arrangement a later change makes to take the
//! sync off the outbox thread's path). The kill -9 tests cannot show it: the page cache
//! survives a killed process.
//!
//! `strace` records, per thread, the daemon's writes to the WAL (each frame's 24-byte header,
//! whose bytes 4-7 are non-zero on the frame that commits, then its page), its `fsync` and
//! `fdatasync` calls and its replies on the socket. For every acknowledged event the first WAL
//! page holding its id is found, then the commit frame that followed it; a sync of the WAL must
//! begin after that commit frame was written and return before the reply that acknowledges it.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use common::*;

const CLIENTS: usize = 4;
/// Under an emulator a tenth (`scaled`).
const PER_CLIENT: usize = 300;
const WINDOW: usize = 32;

/// One traced system call.
#[derive(Debug)]
struct Call {
    /// Seconds, to the microsecond.
    start: f64,
    end: f64,
    name: String,
    /// The path (or `socket:[…]`) of its first argument, a descriptor.
    target: String,
    /// Its buffers' bytes, as far as strace printed them.
    data: Vec<u8>,
    ok: bool,
    /// An `openat` with `O_CREAT`.
    creates: bool,
}

/// `\xNN…` as strace -xx prints a string.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4);
    let mut rest = s;
    while !rest.is_empty() {
        let hex = rest.strip_prefix("\\x")?;
        out.push(u8::from_str_radix(hex.get(..2)?, 16).ok()?);
        rest = &hex[2..];
    }
    Some(out)
}

/// One line of `strace -ttt -T -y -xx`: `1796539095.216057 pwrite64(4<\x2f…>, "\x00…", 24, 32)
/// = 24 <0.000012>`. Lines that are not a finished call (signals, exits) give `None`.
fn parse(line: &str) -> Option<Call> {
    let (start, rest) = line.split_once(' ')?;
    let start: f64 = start.parse().ok()?;
    let (name, args) = rest.split_once('(')?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let (_, result) = args.rsplit_once(") = ")?;
    let ok = !result.starts_with('-') && !result.starts_with('?');
    let took: f64 = result
        .rsplit_once('<')
        .and_then(|(_, t)| t.trim_end().strip_suffix('>'))
        .and_then(|t| t.parse().ok())?;
    // The descriptor's path, `N<…>`, for calls whose first argument is one.
    let target = args
        .split_once('<')
        .filter(|(fd, _)| fd.chars().all(|c| c.is_ascii_digit()) && !fd.is_empty())
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(path, _)| {
            unhex(path).map_or(path.to_string(), |b| {
                String::from_utf8_lossy(&b).into_owned()
            })
        })
        .unwrap_or_default();
    let mut data = Vec::new();
    for (i, part) in args.split('"').enumerate() {
        if i % 2 == 1 {
            data.extend(unhex(part).unwrap_or_default());
        }
    }
    Some(Call {
        start,
        end: start + took,
        name: name.to_string(),
        target,
        data,
        ok,
        creates: args.contains("O_CREAT"),
    })
}

/// Every traced call of every thread, in the order they began.
fn calls(prefix: &Path) -> Vec<Call> {
    let dir = prefix.parent().unwrap();
    let stem = prefix.file_name().unwrap().to_string_lossy().into_owned();
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{stem}.")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        all.extend(text.lines().filter_map(parse));
    }
    all.sort_by(|a, b| a.start.total_cmp(&b.start));
    all
}

/// The ids among `ids` (UUIDs, 36 bytes) that `data` holds.
fn ids_in<'a>(data: &'a [u8], ids: &HashSet<&str>) -> Vec<&'a str> {
    let mut found = Vec::new();
    for w in data.windows(36) {
        if [8, 13, 18, 23].iter().all(|&i| w[i] == b'-') {
            if let Some(id) = std::str::from_utf8(w).ok().filter(|id| ids.contains(id)) {
                found.push(id);
            }
        }
    }
    found
}

/// The ids a reply on the socket acknowledges (`{"id":"…","ok":true}` lines).
fn acknowledged_ids(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .lines()
        .filter(|l| l.contains("\"ok\":true"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_event_is_acknowledged_after_a_sync_of_the_wal_that_began_after_its_commit() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace (scripts/test and .ci/run install it)"
    );
    let setup = Setup::new(
        "[[sink]]\nname = \"cloud\"\nurl = \"http://127.0.0.1:1/hook\"\nevents = [\"t.*\"]\n[sink.retry]\ninitial = \"1h\"\nmax = \"1h\"\n[sink.signing]\nscheme = \"none\"\n",
    );
    let prefix = setup.dir.path().join("trace");
    let mut traced = setup.start_under(&[
        "strace",
        "-ff",
        "-ttt",
        "-T",
        "-y",
        "-xx",
        "-s",
        "4096",
        "-e",
        "trace=pwrite64,pwritev,write,writev,sendto,sendmsg,fsync,fdatasync,openat",
        "-o",
        prefix.to_str().expect("a UTF-8 path"),
    ]);
    let socket = setup.socket();

    let per = scaled(PER_CLIENT);
    let acked: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let socket = &socket;
                s.spawn(move || emit_pipelined(socket, c, per, "t.reading", WINDOW))
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client"))
            .collect()
    });
    assert_eq!(acked.len(), CLIENTS * per);
    assert_eq!(
        traced.terminate(),
        Some(0),
        "the traced daemon stops cleanly"
    );

    let db = setup.db();
    let wal = format!("{}-wal", db.display());
    let dir = db.parent().unwrap().display().to_string();
    let calls = calls(&prefix);

    // The WAL's writes, in order (one thread writes it), each with whether it is a commit
    // frame's header; its syncs; the replies.
    let writes: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name.starts_with("pwrite") && c.target == wal && c.ok)
        .collect();
    let is_commit = |c: &Call| c.data.len() == 24 && c.data[4..8] != [0, 0, 0, 0];
    let syncs: Vec<&Call> = calls
        .iter()
        .filter(|c| (c.name == "fsync" || c.name == "fdatasync") && c.target == wal && c.ok)
        .collect();
    let mut replies: HashMap<String, f64> = HashMap::new();
    for c in calls.iter().filter(|c| c.target.starts_with("socket:")) {
        for id in acknowledged_ids(&c.data) {
            replies.entry(id).or_insert(c.start);
        }
    }
    assert!(
        writes.iter().any(|w| is_commit(w)) && !syncs.is_empty(),
        "the trace shows no commit or no sync of {wal}: {} calls traced",
        calls.len()
    );

    let wanted: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let mut first_write: HashMap<&str, usize> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        for id in ids_in(&w.data, &wanted) {
            first_write.entry(id).or_insert(i);
        }
    }
    let mut late = Vec::new();
    for id in &acked {
        let reply = *replies
            .get(id)
            .unwrap_or_else(|| panic!("no reply acknowledging {id} in the trace"));
        let first = *first_write
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} was acknowledged and never written to the WAL"));
        // A frame is written as its header, then its page: the page holding the id may be the
        // commit frame's own.
        let commit = writes[first.saturating_sub(1)..]
            .iter()
            .find(|w| is_commit(w))
            .unwrap_or_else(|| panic!("{id} was acknowledged and its commit never written"));
        let synced = syncs
            .iter()
            .any(|s| s.start >= commit.end && s.end <= reply);
        if !synced {
            late.push(format!(
                "{id}: committed at {:.6}, acknowledged at {reply:.6}",
                commit.end
            ));
        }
    }
    assert!(
        late.is_empty(),
        "{} of {} events were acknowledged before a sync of the WAL after their commit, e.g. {:?}",
        late.len(),
        acked.len(),
        &late[..late.len().min(3)]
    );

    // The WAL's name: created (opened with O_CREAT) and then its directory synced, before the
    // first acknowledgement.
    let first_reply = replies.values().copied().fold(f64::INFINITY, f64::min);
    let created = calls
        .iter()
        .filter(|c| c.name == "openat" && c.ok && c.creates && c.start < first_reply)
        .filter(|c| c.data == wal.as_bytes())
        .map(|c| c.end)
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(created.is_finite(), "the trace shows no creation of {wal}");
    let dir_synced = calls.iter().any(|c| {
        c.name == "fsync" && c.ok && c.target == dir && c.start >= created && c.end <= first_reply
    });
    assert!(
        dir_synced,
        "the directory {dir} was not synced between the WAL's opening and the first acknowledgement"
    );
}
