//! With `durability = full`, the sync that makes a commit durable runs on a thread of its own,
//! so the outbox thread goes on with the next batch while the disk syncs the last one (the way
//! PostgreSQL's WAL writer does it). A part of `store`, kept apart to be read on its own.
//!
//! The connection runs with `synchronous = NORMAL`: SQLite then syncs the WAL before every
//! checkpoint, the main file after it and the WAL's header when the log starts over, but not
//! at a commit. `synchronous = FULL` adds exactly one thing to that, a sync of the WAL after
//! every commit, and that is what this thread does: every commit that acknowledges something
//! (an event stored, a fact changed, a command done) is handed here with its answers, and they
//! are sent only once a sync of the WAL that began after the commit has returned. So an
//! acknowledgement still means what it meant: the commit is on the disk. The WAL is one file
//! written in order, so one sync makes every commit before it durable: the commits that
//! arrived while the last sync ran share the next one.
//!
//! The WAL is synced through a descriptor of its own, checked against the file's name before
//! every sync (a WAL deleted and made again is opened again), and the directory is synced when
//! a WAL is first opened here, as SQLite does at a new WAL's first sync, so that its name
//! survives a power cut too.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{AppendError, Appended, Delivery, Redelivered, SinkId, Totals};
use crate::wake::Wake;

/// An answer of a batch, decided; sent when the batch is durable (`Reply::send`).
pub(super) enum Reply {
    Append(
        oneshot::Sender<Result<Appended, AppendError>>,
        Result<Appended, AppendError>,
    ),
    Transition(
        oneshot::Sender<Result<Option<Appended>, AppendError>>,
        Result<Option<Appended>, AppendError>,
    ),
    Fetch(
        oneshot::Sender<Result<Vec<Delivery>, String>>,
        Result<Vec<Delivery>, String>,
    ),
    Routes(
        oneshot::Sender<Result<Vec<SinkId>, String>>,
        Result<Vec<SinkId>, String>,
    ),
    Redeliver(
        oneshot::Sender<Result<Redelivered, String>>,
        Result<Redelivered, String>,
    ),
    Done(oneshot::Sender<()>),
    Totals(oneshot::Sender<Totals>, Totals),
}

impl Reply {
    pub(super) fn send(self) {
        match self {
            Reply::Append(reply, r) => drop(reply.send(r)),
            Reply::Transition(reply, r) => drop(reply.send(r)),
            Reply::Fetch(reply, r) => drop(reply.send(r)),
            Reply::Routes(reply, r) => drop(reply.send(r)),
            Reply::Redeliver(reply, r) => drop(reply.send(r)),
            Reply::Done(reply) => drop(reply.send(())),
            Reply::Totals(reply, t) => drop(reply.send(t)),
        }
    }

    /// The answer when the commit it rests on could not be made durable: what it acknowledged
    /// becomes an error (the producer tries again; the commit may still be kept, and its event
    /// then delivered twice: at least once).
    fn unsynced(self, why: &str) -> Reply {
        match self {
            Reply::Append(reply, Ok(_)) => {
                Reply::Append(reply, Err(AppendError::Storage(why.into())))
            }
            Reply::Transition(reply, Ok(_)) => {
                Reply::Transition(reply, Err(AppendError::Storage(why.into())))
            }
            Reply::Routes(reply, Ok(_)) => Reply::Routes(reply, Err(why.into())),
            Reply::Redeliver(reply, Ok(_)) => Reply::Redeliver(reply, Err(why.into())),
            other => other,
        }
    }
}

/// What a committed batch answers and wakes, once it is durable.
pub(super) struct Durable {
    pub(super) replies: Vec<Reply>,
    pub(super) wake: Vec<Arc<Wake>>,
}

impl Durable {
    /// Sends the answers and wakes the sinks.
    pub(super) fn release(self) {
        self.replies.into_iter().for_each(Reply::send);
        for w in self.wake {
            w.raise();
        }
    }
}

/// The thread that syncs the WAL behind the outbox thread's commits.
pub(super) struct Syncer {
    tx: Option<Sender<Durable>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread for the outbox at `db` (its WAL is `db` with `-wal` after it).
    pub(super) fn start(db: &Path) -> io::Result<Syncer> {
        let (tx, rx) = channel();
        let mut wal = Wal::new(db);
        let thread = std::thread::Builder::new()
            .name("outbox-sync".into())
            .spawn(move || sync_loop(&mut wal, rx))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Sends `batch`'s answers once a sync begun now has returned.
    pub(super) fn after_sync(&self, batch: Durable) {
        match &self.tx {
            Some(tx) => {
                if let Err(unsent) = tx.send(batch) {
                    // The thread is gone (it cannot panic short of an abort): nothing is
                    // acknowledged without its sync.
                    let why = "the outbox's sync thread is gone";
                    let Durable { replies, wake } = unsent.0;
                    Durable {
                        replies: replies.into_iter().map(|r| r.unsynced(why)).collect(),
                        wake,
                    }
                    .release();
                }
            }
            None => unreachable!("the syncer is stopped only when it is dropped"),
        }
    }
}

impl Drop for Syncer {
    /// Syncs and answers what is still waiting, then ends the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(wal: &mut Wal, rx: Receiver<Durable>) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        // Every commit handed over before the sync begins is in the file already: one sync
        // makes them all durable.
        let batches: Vec<Durable> = std::iter::once(first).chain(rx.try_iter()).collect();
        match wal.sync() {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    log::info!(path:% = wal.path.display(); "The outbox's log syncs again");
                }
                batches.into_iter().for_each(Durable::release);
            }
            Err(e) => {
                let why = format!(
                    "syncing the outbox's log {} failed ({e}); the event may be kept or not",
                    wal.path.display()
                );
                if !std::mem::replace(&mut failing, true) {
                    log::error!(path:% = wal.path.display(); "{why}: what it held is answered with an error");
                }
                for Durable { replies, wake } in batches {
                    Durable {
                        replies: replies.into_iter().map(|r| r.unsynced(&why)).collect(),
                        wake,
                    }
                    .release();
                }
            }
        }
    }
}

/// The outbox's WAL, as this thread syncs it.
struct Wal {
    path: PathBuf,
    dir: PathBuf,
    /// The open WAL with its device and inode.
    file: Option<(File, (u64, u64))>,
}

impl Wal {
    fn new(db: &Path) -> Wal {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Wal {
            path: PathBuf::from(path),
            dir,
            file: None,
        }
    }

    /// Syncs the data of the WAL that has the name now (a first sync of a file also syncs the
    /// directory).
    fn sync(&mut self) -> io::Result<()> {
        let now = std::fs::metadata(&self.path)?;
        let current = self
            .file
            .as_ref()
            .is_some_and(|(_, id)| *id == (now.dev(), now.ino()));
        if !current {
            let file = File::open(&self.path)?;
            let meta = file.metadata()?;
            File::open(&self.dir)?.sync_all()?;
            self.file = Some((file, (meta.dev(), meta.ino())));
        }
        match &self.file {
            Some((file, _)) => file.sync_data(),
            None => unreachable!("opened above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_is_opened_again_when_its_name_holds_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        let wal_path = dir.path().join("outbox.db-wal");
        let mut wal = Wal::new(&db);
        assert_eq!(wal.path, wal_path);
        assert!(
            wal.sync().is_err(),
            "no WAL yet: nothing to sync is an error"
        );
        std::fs::write(&wal_path, b"one").unwrap();
        wal.sync().unwrap();
        let first = wal.file.as_ref().unwrap().1;
        wal.sync().unwrap();
        assert_eq!(wal.file.as_ref().unwrap().1, first, "the same file is kept");
        // Made again under the same name: a new inode (the old one is kept open meanwhile so
        // that the file system cannot hand out its number again).
        let old = File::open(&wal_path).unwrap();
        std::fs::remove_file(&wal_path).unwrap();
        std::fs::write(&wal_path, b"two").unwrap();
        wal.sync().unwrap();
        assert_ne!(
            wal.file.as_ref().unwrap().1,
            first,
            "the new file is opened"
        );
        drop(old);
    }

    #[test]
    fn answers_wait_for_the_sync_and_turn_to_errors_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        std::fs::write(dir.path().join("outbox.db-wal"), b"frames").unwrap();
        let appended = || Appended {
            id: "e1".into(),
            duplicate: false,
            stored: true,
        };
        let (tx, mut rx) = oneshot::channel();
        let wake = Arc::new(Wake::new());
        let seen = wake.generation();
        let syncer = Syncer::start(&db).unwrap();
        syncer.after_sync(Durable {
            replies: vec![Reply::Append(tx, Ok(appended()))],
            wake: vec![wake.clone()],
        });
        drop(syncer); // answers what waits, then ends
        assert_eq!(rx.try_recv().unwrap(), Ok(appended()));
        assert_ne!(wake.generation(), seen, "the sink is woken after the sync");

        // No WAL to sync: what was acknowledged becomes an error; the rest is sent as it was.
        std::fs::remove_file(dir.path().join("outbox.db-wal")).unwrap();
        let (tx, mut rx) = oneshot::channel();
        let (done, mut done_rx) = oneshot::channel();
        let syncer = Syncer::start(&db).unwrap();
        syncer.after_sync(Durable {
            replies: vec![Reply::Append(tx, Ok(appended())), Reply::Done(done)],
            wake: Vec::new(),
        });
        drop(syncer);
        match rx.try_recv().unwrap() {
            Err(AppendError::Storage(why)) => assert!(why.contains("syncing"), "{why}"),
            other => panic!("acknowledged without a sync: {other:?}"),
        }
        done_rx.try_recv().unwrap();
    }
}
