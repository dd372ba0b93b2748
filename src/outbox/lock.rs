//! One writer of the outbox: an exclusive `flock` on `<outbox>.lock` (mode 0600, holding the
//! holder's pid), taken before the database is opened for writing and held until the outbox
//! thread ends. The daemon and the offline commands that write (`redeliver` with the daemon
//! down) take it; read-only openers (`status`, `activity`, `dead-letters`) do not.
//!
//! A file of its own rather than a lock on the database: SQLite locks the database with
//! `fcntl` locks, which closing any other descriptor of the file would drop; a damaged
//! database is renamed aside and a fresh one created, which a lock on the file would not
//! follow; and the lock file can say who holds it. The kernel drops a `flock` when its holder
//! dies, however it dies, so a stale file never keeps anyone out; qemu-user passes `flock`
//! through to the host kernel as it is.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// How long a process refused the lock waits for the holder to write its pid (it writes it
/// just after taking the lock).
const PID_WAIT: Duration = Duration::from_secs(1);

/// The outbox's lock, held while this value lives.
#[derive(Debug)]
pub(super) struct Owner {
    _lock: Flock<File>,
}

/// `<outbox>.lock`, beside the outbox.
pub fn lock_path(outbox: &Path) -> PathBuf {
    let mut p = outbox.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl Owner {
    /// Takes the lock of the outbox at `outbox` without waiting; `StoreError::Held` names the
    /// process that has it.
    pub(super) fn take(outbox: &Path) -> Result<Owner, StoreError> {
        let path = lock_path(outbox);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(outbox, e))?;
        }
        let io = |e| StoreError::io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        give_to_outbox_owner(&file, outbox).map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Held {
                    path: outbox.to_owned(),
                    pid: holder(file),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        // The pid only names the holder to whoever is refused: on a full disk, where it may not
        // fit, the lock holds all the same and they are told the pid is unknown.
        let pid = format!("{}\n", std::process::id());
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(pid.as_bytes()));
        if let Err(e) = written {
            log::warn!("Cannot write this process's pid in {}: {e}", path.display());
        }
        Ok(Owner { _lock: lock })
    }
}

/// Run as root (an offline `redeliver` by an operator), gives the lock file to the owner of
/// the outbox (of its directory before the outbox exists), as SQLite does with the -wal and
/// -shm files it creates: a file of root's would lock the daemon's user out of its outbox.
fn give_to_outbox_owner(file: &File, outbox: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = outbox.parent().filter(|d| !d.as_os_str().is_empty());
    let owner =
        std::fs::metadata(outbox).or_else(|_| std::fs::metadata(dir.unwrap_or(Path::new("."))))?;
    let mine = file.metadata()?;
    if (mine.uid(), mine.gid()) == (owner.uid(), owner.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
}

/// The pid the holder wrote in the lock file, waiting briefly for a holder that has just
/// taken the lock to write it.
fn holder(mut file: File) -> Option<u32> {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        if let Some(pid) = read
            .ok()
            .and_then(|_| text.lines().next()?.trim().parse().ok())
        {
            return Some(pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
