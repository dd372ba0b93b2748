//! Inventory scripts, as Mender's client runs them: every regular executable file named
//! `mender-inventory-*` or `edgehook-inventory-*` in the configured directories, in path order,
//! with no arguments, each in a process group of its own so that a script that hangs is killed
//! with its children at the timeout.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// File-name prefixes of inventory scripts.
pub const PREFIXES: [&str; 2] = ["mender-inventory-", "edgehook-inventory-"];

/// Most output read from one script; a script printing more contributes nothing.
const MAX_OUTPUT: usize = 1024 * 1024;

/// How often a running script's wait looks at the cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

/// The scripts in `dirs`, directories in the order given, files by name within each.
/// A directory that does not exist holds no scripts; one that cannot be read is a warning.
pub fn find(dirs: &[PathBuf], warnings: &mut Vec<String>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warnings.push(format!(
                    "cannot read inventory scripts directory {}: {e}",
                    dir.display()
                ));
                continue;
            }
        };
        let mut in_dir: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_script(p))
            .collect();
        in_dir.sort();
        found.extend(in_dir);
    }
    found
}

fn is_script(path: &Path) -> bool {
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PREFIXES.iter().any(|p| n.starts_with(p)));
    // `metadata` follows symbolic links: a link to an executable file is a script, as it is
    // for Mender.
    named
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs one script and returns its standard output, or why it contributes nothing.
pub fn run(script: &Path, timeout: Duration, cancel: &AtomicBool) -> Result<Vec<u8>, String> {
    let mut child = Command::new(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("cannot read its output".into());
    };
    let (tx, rx) = mpsc::channel();
    // A thread reads both pipes to their ends, so neither can fill up and stall the script;
    // this thread only waits, with the timeout.
    std::thread::spawn(move || {
        let err_reader = std::thread::spawn(move || read_capped(&mut stderr, 4096));
        let out = read_capped(&mut stdout, MAX_OUTPUT);
        let err = err_reader.join().unwrap_or_default();
        let _ = tx.send((out, err));
    });
    let deadline = crate::config::units::later(Instant::now(), timeout);
    let finished = loop {
        let now = Instant::now();
        if now >= deadline || cancel.load(Ordering::Relaxed) {
            break None;
        }
        match rx.recv_timeout((deadline - now).min(CANCEL_CHECK)) {
            Ok(done) => break Some(done),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    // Whatever is left in the script's group goes, finished or not: a child that outlives its
    // script would otherwise run on unseen. The script is not reaped yet, so its id, which is
    // the group's, cannot have been given to another process. A script that reached the end
    // of its output is already exiting, and SIGKILL does not change its exit status.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait();
    let Some(((out, too_much), (err, _))) = finished else {
        return Err(if cancel.load(Ordering::Relaxed) {
            "stopped: edgehook is shutting down".into()
        } else {
            format!(
                "timed out after {}; killed with its children",
                humantime::format_duration(timeout)
            )
        });
    };
    let status = status.map_err(|e| format!("cannot wait for it: {e}"))?;
    if !status.success() {
        let why = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        let said = String::from_utf8_lossy(&err);
        let said = said.trim();
        return Err(if said.is_empty() {
            why
        } else {
            format!("{why}: {}", said.lines().next().unwrap_or_default())
        });
    }
    if too_much {
        return Err(format!("printed more than {MAX_OUTPUT} bytes"));
    }
    Ok(out)
}

/// Reads `r` to its end, keeping at most `cap` bytes; true when more was there.
fn read_capped(r: &mut impl Read, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                over |= n > room;
            }
        }
    }
    (kept, over)
}

/// The `key=value` pairs of a script's output, in order, by the rules of Mender's client:
/// split at the first `=`, a trailing `\r` dropped, blank lines skipped, and lines without `=`
/// or with an empty key skipped with a warning naming the script and the line.
pub fn parse(script: &Path, output: &[u8], warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(output);
    let mut pairs = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                pairs.push((key.to_string(), value.to_string()));
            }
            Some(_) => warnings.push(format!(
                "inventory script {} line {}: empty key; line skipped",
                script.display(),
                n + 1
            )),
            None => warnings.push(format!(
                "inventory script {} line {}: no `=` in {:?}; line skipped",
                script.display(),
                n + 1,
                line.chars().take(80).collect::<String>()
            )),
        }
    }
    pairs
}
