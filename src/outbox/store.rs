//! The outbox thread: it owns the SQLite connection, runs every command that is waiting in one
//! transaction, and answers only after the commit. Counters (`pending`, event count and bytes)
//! are kept incrementally, so nothing ever counts rows by scanning a table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    AppendError, Appended, Command, DECOMMISSIONED, Delivery, DeviceFacts, FETCH_BYTES, Fact,
    Fetched, Measured, Opened, Published, Redeliver, Redelivered, Report, Route, Share, SinkId,
    SinkState, StoreError, Totals, Transition, clock, lock, schema,
};
use crate::config::{Durability, Storage, WhenFull};

/// Most commands run in one transaction. Their events' bytes are bounded too: each holds its
/// share of `BUDGET` until it is answered, so a batch holds at most `BUDGET` of them.
const BATCH: usize = 2048;

/// A sink's deliveries after a seq, in order, with their events. It has no `LIMIT`: SQLite
/// plans a bound `LIMIT ?` for the value bound, so binding one expires the statement and every
/// fetch would be parsed and planned again (`sqlite3Reprepare`, about 2 % of the outbox
/// thread in an MQTT drain). `fetch` takes as many rows as it wants; rows are stepped one at a
/// time, so no more are read.
pub(super) const FETCH_DELIVERIES: &str =
    "SELECT d.seq, d.attempts, e.id, e.type, e.body, e.created_ms
     FROM deliveries d JOIN events e ON e.seq = d.seq
     WHERE d.sink = ?1 AND d.seq > ?2 ORDER BY d.seq";

/// Delivery reports gathered into one commit while a sink drains (see
/// `wait_for_more_reports`), counted in deliveries (a `DeliveredMany` as many as it holds):
/// from `REPORTS_BUSY` waiting, or from one when reports were committed within
/// `REPORTS_RECENT` (a sink delivering one at a time), up to `REPORTS_TOGETHER` or what
/// arrives within `REPORTS_WAIT`. Every commit rewrites the same pages of the queue in the
/// WAL, so a fast drain (an MQTT sink reporting its PUBACKs many at a time) is not held to a
/// commit per few dozen deliveries.
///
/// What a `kill -9` can make a sink send again is what it delivered that was not yet recorded.
/// Gathering cannot carry that past a sink's fetches: a `Fetch` is never kept waiting (it
/// makes the batch more than reports, `only_reports`), and it is answered only after the
/// commit of its batch, while every report the sink sent before it is in that batch or an
/// earlier one. So what is unrecorded at a kill was reported since the sink asked for its
/// last answered fetch: at most that fetch, what it still held when it asked (it reads ahead,
/// `READ_AHEAD_LOW` in `sinks`), and what is in flight. Meanwhile, a batch waits no longer
/// than `REPORTS_WAIT`, so what is unrecorded is mostly what arrives in that and one commit.
const REPORTS_BUSY: usize = 4;
const REPORTS_RECENT: Duration = Duration::from_millis(20);
const REPORTS_TOGETHER: usize = 512;
const REPORTS_WAIT: Duration = Duration::from_millis(2);
const REPORTS_STEP: Duration = Duration::from_micros(500);

/// How long the outbox must have been quiet (nothing but the daemon's timers asking) before
/// it gives the memory of its busy spell back (`give_back`).
const QUIET_BEFORE_GIVING_BACK: Duration = Duration::from_secs(5);

/// How long the checkpoint after a drain waits for readers to leave the WAL.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// Deliveries whose reports are kept in memory while the disk is full (about 100 bytes each;
/// a `DeliveredMany` counts as its number of deliveries).
const UNRECORDED_KEEP: usize = 100_000;

/// How often writes are tried again while the disk is full.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The reason of a dead letter made by `max_age`, whether the outbox's sweep or a sink
/// (`Shared::expired` in `sinks`, which writes the same) found the delivery too old.
const EXPIRED: &str = "expired";

/// Attempts kept for `edgehook activity`, over all sinks; older ones are trimmed in steps.
pub(super) const ACTIVITY_KEEP: i64 = 10_000;

#[derive(Debug, Default, Clone)]
struct SinkRow {
    pending: i64,
    delivered: i64,
    failed_attempts: i64,
    dead: i64,
    state: Option<SinkState>,
    last_success_ms: Option<i64>,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
}

pub(super) struct Store {
    conn: Connection,
    /// This process's hold on the outbox, released when the thread ends.
    _owner: lock::Owner,
    path: PathBuf,
    limits: Storage,
    events: i64,
    bytes: i64,
    /// What was dropped, expired or trimmed, and this batch's losses to log.
    lost: Lost,
    counts_dirty: bool,
    sinks: BTreeMap<SinkId, SinkRow>,
    dirty: BTreeSet<SinkId>,
    routes: Vec<(SinkId, Route)>,
    to_wake: BTreeSet<SinkId>,
    /// Local applications' events are refused.
    decommissioned: bool,
    /// Some stored event has a producer's id (in `supplied_ids`).
    any_supplied: bool,
    /// Commits are synced now (`PRAGMA synchronous = FULL`).
    syncing: bool,
    /// SQLite reported the file corrupt during this batch.
    corrupt: Option<String>,
    /// A write of this batch failed for want of space on the disk.
    no_space: bool,
    /// The disk was full at the last commit (so the recovery is logged once).
    disk_full: bool,
    /// Delivery reports the full disk had no room for, recorded once it has.
    unrecorded: Vec<Report>,
    /// The deliveries `unrecorded` reports on (`Report::weight`), bounded by `UNRECORDED_KEEP`.
    unrecorded_deliveries: usize,
    /// When writes were last tried on the full disk.
    last_probe: Instant,
    /// When delivery reports alone were last committed.
    last_reports: Option<Instant>,
    /// When something other than the daemon's timers last came, if memory was not given back
    /// since.
    last_busy: Option<Instant>,
    /// The wall clock's jumps, added to stored times (`clock`), as of this batch.
    offset_ms: i64,
    /// The offset as the outbox keeps it.
    saved_offset_ms: Option<i64>,
}

#[path = "delivered.rs"]
pub(super) mod delivered;
#[path = "losses.rs"]
mod losses;
#[path = "recovery.rs"]
mod recovery;

use losses::{Lost, Named, Reason};

/// The in-memory counters, kept to be restored when a transaction is rolled back.
type Snapshot = (i64, i64, Lost, BTreeMap<SinkId, SinkRow>, bool);

fn meta_get<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn meta_set(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value])?;
    Ok(())
}

/// The value kept under `key`, generated and kept on first use.
fn meta_once(
    conn: &Connection,
    key: &str,
    make: impl FnOnce() -> String,
) -> rusqlite::Result<String> {
    if let Some(v) = meta_get(conn, key)? {
        return Ok(v);
    }
    let v = make();
    meta_set(conn, key, &v)?;
    Ok(v)
}

impl Store {
    pub(super) fn open(
        limits: &Storage,
        configured_device_id: Option<&str>,
    ) -> Result<(Store, Opened), StoreError> {
        let path = limits.path.clone();
        let owner = lock::Owner::take(&path)?;
        let (conn, moved_aside) = schema::open_rw(&path, limits.durability)?;
        let err = |e| StoreError::sqlite(&limits.path, e);
        delivered::create_batch_table(&conn).map_err(err)?;
        let kept_created: Option<i64> = meta_get(&conn, "created_ms").map_err(err)?;
        let created = kept_created.is_none();
        let new_id = || uuid::Uuid::new_v4().to_string();
        let kept_id = meta_once(&conn, "device_id", new_id).map_err(err)?;
        let device_id = configured_device_id.map_or(kept_id, str::to_string);
        let created_ms = match kept_created {
            Some(ms) => ms,
            None => {
                let ms = super::now_ms();
                meta_set(&conn, "created_ms", ms).map_err(err)?;
                ms
            }
        };
        let facts = DeviceFacts {
            lifecycle: meta_get(&conn, Fact::Lifecycle.key()).map_err(err)?,
            status: meta_get(&conn, Fact::Status.key()).map_err(err)?,
            auth_set_id: meta_once(&conn, "auth_set_id", new_id).map_err(err)?,
            created_ms,
        };
        let events = meta_get(&conn, "event_count").map_err(err)?.unwrap_or(0);
        let bytes = meta_get(&conn, "event_bytes").map_err(err)?.unwrap_or(0);
        let lost = Lost::counted(
            meta_get(&conn, "dropped").map_err(err)?.unwrap_or(0),
            meta_get(&conn, "expired").map_err(err)?.unwrap_or(0),
            meta_get(&conn, "dead_letters_trimmed")
                .map_err(err)?
                .unwrap_or(0),
        );
        let any_supplied = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM supplied_ids)", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let mut store = Store {
            conn,
            _owner: owner,
            path,
            limits: limits.clone(),
            events,
            bytes,
            lost,
            counts_dirty: false,
            sinks: BTreeMap::new(),
            dirty: BTreeSet::new(),
            routes: Vec::new(),
            to_wake: BTreeSet::new(),
            decommissioned: facts.lifecycle.as_deref() == Some(DECOMMISSIONED),
            any_supplied,
            syncing: limits.durability == Durability::Full,
            corrupt: None,
            no_space: false,
            disk_full: false,
            unrecorded: Vec::new(),
            unrecorded_deliveries: 0,
            last_probe: Instant::now(),
            last_reports: None,
            last_busy: None,
            offset_ms: 0,
            saved_offset_ms: None,
        };
        store.start_clock().map_err(err)?;
        store.load_sinks().map_err(err)?;
        Ok((
            store,
            Opened {
                device_id,
                moved_aside,
                created,
                facts,
            },
        ))
    }

    fn load_sinks(&mut self) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT id, pending, delivered, failed_attempts, dead, state, last_success_ms, last_error, last_error_ms FROM sinks",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                SinkRow {
                    pending: r.get(1)?,
                    delivered: r.get(2)?,
                    failed_attempts: r.get(3)?,
                    dead: r.get(4)?,
                    state: Some(parse_state(&r.get::<_, String>(5)?)),
                    last_success_ms: r.get(6)?,
                    last_error: r.get(7)?,
                    last_error_ms: r.get(8)?,
                },
            ))
        })?;
        for row in rows {
            let (id, row) = row?;
            self.sinks.insert(id, row);
        }
        Ok(())
    }

    /// The thread's loop: take what is waiting, run it in one transaction, answer, repeat.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>, published: &Published) {
        published.set_expirable(!self.nothing_to_expire());
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            let mut waited = Duration::ZERO;
            loop {
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                let draining = self
                    .last_reports
                    .is_some_and(|at| at.elapsed() < REPORTS_RECENT);
                if !wait_for_more_reports(&batch, waited, draining) {
                    break;
                }
                std::thread::sleep(REPORTS_STEP);
                waited += REPORTS_STEP;
            }
            let only_reports = only_reports(&batch);
            let busy = batch
                .iter()
                .any(|c| !matches!(c, Command::Totals(_) | Command::Expire(..)));
            self.run_batch(&mut batch, published);
            if only_reports {
                self.last_reports = Some(Instant::now());
            }
            if busy {
                self.last_busy = Some(Instant::now());
                published.set_rested(false);
            } else if self
                .last_busy
                .is_some_and(|at| at.elapsed() >= QUIET_BEFORE_GIVING_BACK)
            {
                self.last_busy = None;
                self.shrink_wal_when_drained();
                give_back(&self.conn);
                published.set_rested(true);
            }
        }
        self.lost.log(true);
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    /// Once no sink has a delivery pending, checkpoints the WAL into the outbox and truncates
    /// it, when it is over `WAL_LIMIT`: SQLite's own checkpoints (every 1,000 pages, after a
    /// commit) move the WAL's pages into the outbox and `journal_size_limit` truncates it when
    /// the next transaction starts it over, but a drain ends with no next transaction, and a
    /// WAL left at its largest holds that much of the disk until the next busy spell. A reader
    /// (`edgehook status`) may keep it from being truncated: the checkpoint waits for readers
    /// only briefly (`CHECKPOINT_WAIT`, not the connection's busy timeout, as producers wait
    /// meanwhile), and it is tried again at the next drained commit or once the outbox is at
    /// rest.
    fn shrink_wal_when_drained(&mut self) {
        if self.sinks.values().any(|row| row.pending > 0) {
            return;
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > schema::WAL_LIMIT) {
            let _ = self.conn.busy_timeout(CHECKPOINT_WAIT);
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            let _ = self.conn.busy_timeout(schema::BUSY_TIMEOUT);
        }
    }

    /// Runs `batch` in one transaction (none when it writes nothing), publishes what the
    /// daemon's timers read (`Published`), then answers it, so that whoever had an answer
    /// reads the new state.
    fn run_batch(&mut self, batch: &mut Vec<Command>, published: &Published) {
        enum Answer {
            /// With the event's share of `BUDGET`, given back once answered.
            Append(
                oneshot::Sender<Result<Appended, AppendError>>,
                Result<Appended, AppendError>,
                Option<Share>,
            ),
            Fetch(
                oneshot::Sender<Result<Vec<Delivery>, String>>,
                Result<Vec<Delivery>, String>,
            ),
            Routes(
                oneshot::Sender<Result<Vec<SinkId>, String>>,
                Result<Vec<SinkId>, String>,
            ),
            Transition(
                oneshot::Sender<Result<Option<Appended>, AppendError>>,
                Result<Option<Appended>, AppendError>,
            ),
            Redeliver(
                oneshot::Sender<Result<Redelivered, String>>,
                Result<Redelivered, String>,
            ),
            Done(oneshot::Sender<()>),
            Totals(oneshot::Sender<Totals>),
        }
        let mut answers = Vec::with_capacity(batch.len());
        // While the disk is full, writes are tried once a second; in between, events are
        // refused and delivery reports kept, so that fetches still succeed and sinks deliver.
        let probe = self.last_probe.elapsed() >= PROBE_EVERY;
        let hold = self.disk_full && !probe;
        if self.disk_full && probe {
            self.last_probe = Instant::now();
            // Moving the WAL into the main file gives its space back (SQLite keeps a WAL at its
            // largest size otherwise); it fails harmlessly while there is no room to do it.
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            let kept = std::mem::take(&mut self.unrecorded);
            self.unrecorded_deliveries = 0;
            self.record_alone(kept);
        }
        self.offset_ms = clock::offset_ms();
        let transaction = !self.writes_nothing(batch);
        let began = if transaction {
            self.sync_commit_if(batch.iter().any(Command::acknowledges))
                .and_then(|_| self.conn.execute_batch("BEGIN IMMEDIATE"))
        } else {
            Ok(())
        };
        let snapshot = self.snapshot();
        let mut reports = Vec::new();
        let mut stored_any = false;
        let mut failure: Option<String> = began.err().map(|e| e.to_string());
        for cmd in batch.drain(..) {
            if let Some(f) = &failure {
                match cmd {
                    Command::Append(_, share, reply) => answers.push(Answer::Append(
                        reply,
                        Err(AppendError::Storage(f.clone())),
                        share,
                    )),
                    Command::Transition(_, reply) => answers.push(Answer::Transition(
                        reply,
                        Err(AppendError::Storage(f.clone())),
                    )),
                    Command::Fetch { reply, .. } => {
                        answers.push(Answer::Fetch(reply, Err(f.clone())))
                    }
                    Command::Routes(_, reply) => {
                        answers.push(Answer::Routes(reply, Err(f.clone())))
                    }
                    Command::Expire(_, reply) => answers.push(Answer::Done(reply)),
                    Command::Redeliver(_, reply) => {
                        answers.push(Answer::Redeliver(reply, Err(f.clone())))
                    }
                    Command::Totals(reply) => answers.push(Answer::Totals(reply)),
                    Command::Report(report) => reports.push(report),
                }
                continue;
            }
            let cmd = match cmd {
                Command::Append(_, share, reply) if hold => {
                    answers.push(Answer::Append(reply, Err(AppendError::NoSpace), share));
                    continue;
                }
                Command::Transition(_, reply) if hold => {
                    answers.push(Answer::Transition(reply, Err(AppendError::NoSpace)));
                    continue;
                }
                Command::Report(report) if hold => {
                    self.keep_unrecorded(vec![report], None);
                    continue;
                }
                cmd => cmd,
            };
            stored_any |= matches!(cmd, Command::Append(..) | Command::Transition(..));
            let outcome = match cmd {
                Command::Append(event, share, reply) => match self.append(event) {
                    Ok(r) => {
                        answers.push(Answer::Append(reply, r, share));
                        Ok(())
                    }
                    Err(e) => {
                        answers.push(Answer::Append(
                            reply,
                            Err(AppendError::Storage(e.to_string())),
                            share,
                        ));
                        Err(e)
                    }
                },
                Command::Transition(t, reply) => match self.transition(t) {
                    Ok(r) => {
                        answers.push(Answer::Transition(reply, r));
                        Ok(())
                    }
                    Err(e) => {
                        answers.push(Answer::Transition(
                            reply,
                            Err(AppendError::Storage(e.to_string())),
                        ));
                        Err(e)
                    }
                },
                Command::Fetch {
                    sink,
                    after,
                    limit,
                    reply,
                } => {
                    let r = self.fetch(sink, after, limit).map_err(|e| {
                        self.notice(&e);
                        e.to_string()
                    });
                    answers.push(Answer::Fetch(reply, r));
                    Ok(())
                }
                Command::Report(report) => {
                    reports.push(report.clone());
                    self.report(report)
                }
                Command::Routes(routes, reply) => match self.set_routes(routes) {
                    Ok(ids) => {
                        answers.push(Answer::Routes(reply, Ok(ids)));
                        Ok(())
                    }
                    Err(e) => {
                        answers.push(Answer::Routes(reply, Err(e.to_string())));
                        Err(e)
                    }
                },
                Command::Redeliver(which, reply) => match self.redeliver(&which) {
                    Ok(r) => {
                        answers.push(Answer::Redeliver(reply, Ok(r)));
                        Ok(())
                    }
                    Err(e) => {
                        answers.push(Answer::Redeliver(reply, Err(e.to_string())));
                        Err(e)
                    }
                },
                Command::Expire(now_ms, reply) => {
                    answers.push(Answer::Done(reply));
                    self.expire(now_ms)
                }
                Command::Totals(reply) => {
                    answers.push(Answer::Totals(reply));
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                self.notice(&e);
                failure = Some(e.to_string());
            }
        }
        if failure.is_none() && transaction {
            if let Err(e) = self
                .write_counters()
                .and_then(|_| self.conn.execute_batch("COMMIT"))
            {
                self.notice(&e);
                failure = Some(e.to_string());
            }
        }
        if let Some(why) = self.corrupt.take() {
            self.stop_on_corruption(&why);
        }
        let no_space = std::mem::take(&mut self.no_space);
        if let Some(f) = &failure {
            if !no_space {
                log::error!(path:% = self.path.display(); "Outbox transaction failed; nothing in it was acknowledged: {f}");
            }
            self.roll_back(snapshot);
            if no_space {
                self.record_alone(reports);
            }
        }
        self.lost.log(false);
        self.note_space(no_space, stored_any && failure.is_none());
        if transaction {
            published.committed();
        }
        published.set_expirable(!self.nothing_to_expire() || self.lost.waiting());
        let totals = self.totals();
        for a in answers {
            match a {
                Answer::Append(reply, r, _share) => {
                    let r = match (&failure, r) {
                        (Some(_), Ok(_) | Err(AppendError::Storage(_))) if no_space => {
                            Err(AppendError::NoSpace)
                        }
                        (Some(f), Ok(_)) => Err(AppendError::Storage(f.clone())),
                        (_, r) => r,
                    };
                    let _ = reply.send(r);
                }
                Answer::Transition(reply, r) => {
                    let r = match (&failure, r) {
                        (Some(_), Ok(_) | Err(AppendError::Storage(_))) if no_space => {
                            Err(AppendError::NoSpace)
                        }
                        (Some(f), Ok(_)) => Err(AppendError::Storage(f.clone())),
                        (_, r) => r,
                    };
                    let _ = reply.send(r);
                }
                Answer::Fetch(reply, r) => {
                    let r = match &failure {
                        Some(f) => Err(f.clone()),
                        None => r,
                    };
                    let _ = reply.send(r);
                }
                Answer::Routes(reply, r) => {
                    let r = match &failure {
                        Some(f) => Err(f.clone()),
                        None => r,
                    };
                    let _ = reply.send(r);
                }
                Answer::Redeliver(reply, r) => {
                    let r = match &failure {
                        Some(f) => Err(f.clone()),
                        None => r,
                    };
                    let _ = reply.send(r);
                }
                Answer::Done(reply) => {
                    let _ = reply.send(());
                }
                Answer::Totals(reply) => {
                    let _ = reply.send(totals);
                }
            }
        }
        for id in std::mem::take(&mut self.to_wake) {
            if let Some((_, route)) = self.routes.iter().find(|(sid, _)| *sid == id) {
                route.wake.raise();
            }
        }
        if transaction && failure.is_none() {
            self.shrink_wal_when_drained();
        }
    }

    /// Whether `batch` writes nothing, so that it runs without a transaction: only the
    /// daemon's idle timers (`Totals`, and `Expire` while the outbox holds no event and no dead
    /// letter, so that nothing can expire), with no counter or clock offset unwritten and no
    /// report kept through a full disk. An idle daemon with an empty outbox then runs none of
    /// SQLite's code on its timers, which would map the binary's pages again after `give_back`
    /// (64 KiB around each page touched: 1.1–1.4 MiB back in the RSS at the first status tick
    /// or expiry after it). Asked after `offset_ms` is read for the batch.
    fn writes_nothing(&self, batch: &[Command]) -> bool {
        batch.iter().all(|c| match c {
            Command::Totals(_) => true,
            Command::Expire(..) => self.nothing_to_expire(),
            _ => false,
        }) && !self.disk_full
            && self.unrecorded.is_empty()
            && !self.counters_unwritten()
    }

    /// Whether the outbox holds no event and no dead letter, as its counters say.
    fn nothing_to_expire(&self) -> bool {
        self.events == 0 && self.sinks.values().all(|row| row.dead == 0)
    }

    /// With `durability = full`, a transaction that acknowledges something to a producer (an
    /// event stored, a fact changed, a command done) is synced before the reply; one that only
    /// records how deliveries went is not: a power cut can then lose that record, and the
    /// deliveries are made again (at least once), while the next synced commit makes it
    /// durable too (the WAL is one file, synced whole). On a drain that saves a sync for every
    /// batch of reports, the most expensive thing an SD card does.
    fn sync_commit_if(&mut self, acknowledges: bool) -> rusqlite::Result<()> {
        let sync = acknowledges && self.limits.durability == Durability::Full;
        if sync != self.syncing {
            let mode = if sync { "FULL" } else { "NORMAL" };
            self.conn
                .execute_batch(&format!("PRAGMA synchronous = {mode}"))?;
            self.syncing = sync;
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        Totals {
            events: self.events,
            pending: self.sinks.values().map(|s| s.pending).sum(),
            dead: self.sinks.values().map(|s| s.dead).sum(),
            dropped: self.lost.dropped,
        }
    }

    /// Stores `t.event` and the new value of `t.fact` when the fact changes.
    fn transition(
        &mut self,
        t: Transition,
    ) -> rusqlite::Result<Result<Option<Appended>, AppendError>> {
        let current: Option<String> = meta_get(&self.conn, t.fact.key())?;
        let changed = match current {
            None => true,
            Some(_) if t.only_if_unset => false,
            Some(v) => v != t.value,
        };
        if !changed {
            return Ok(Ok(None));
        }
        let appended = match self.append(t.event)? {
            Ok(a) if t.only_if_stored && !a.stored => return Ok(Ok(None)),
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        for (fact, value) in std::iter::once((t.fact, t.value)).chain(t.also) {
            if fact == Fact::Lifecycle {
                self.decommissioned = value == DECOMMISSIONED;
            }
            meta_set(&self.conn, fact.key(), value)?;
        }
        Ok(Ok(Some(appended)))
    }

    fn append(
        &mut self,
        event: crate::event::NewEvent,
    ) -> rusqlite::Result<Result<Appended, AppendError>> {
        if self.decommissioned && !crate::event::BUILT_IN_TYPES.contains(&event.event_type.as_str())
        {
            return Ok(Err(AppendError::Decommissioned));
        }
        // Before any bound is enforced: a duplicate stores nothing, so it drops nothing.
        if event.supplied && self.any_supplied {
            match self.supplied_match(&event)? {
                Some(true) => {
                    return Ok(Ok(Appended {
                        id: event.id,
                        duplicate: true,
                        stored: true,
                    }));
                }
                Some(false) => return Ok(Err(AppendError::Conflict)),
                None => {}
            }
        }
        let targets: Vec<SinkId> = self
            .routes
            .iter()
            .filter(|(_, r)| r.spec.wants(&event.event_type))
            .map(|(id, _)| *id)
            .collect();
        if targets.is_empty() {
            // No sink wants it: acknowledged, nothing to keep.
            return Ok(Ok(Appended {
                id: event.id,
                duplicate: false,
                stored: false,
            }));
        }
        let len = event.body.len() as i64;
        if len > self.limits.max_bytes as i64 {
            return Ok(Err(AppendError::Full));
        }
        while self.events + 1 > self.limits.max_events as i64
            || self.bytes + len > self.limits.max_bytes as i64
        {
            if self.limits.when_full == WhenFull::RejectNew || !self.drop_oldest()? {
                return Ok(Err(AppendError::Full));
            }
        }
        self.conn
            .prepare_cached(
                "INSERT INTO events (id, type, body, created_ms, refs) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                event.id,
                event.event_type,
                event.body,
                event.created_ms + self.offset_ms,
                targets.len() as i64
            ])?;
        let seq = self.conn.last_insert_rowid();
        if event.supplied {
            self.conn
                .prepare_cached("INSERT INTO supplied_ids (id, seq) VALUES (?1, ?2)")?
                .execute(params![event.id, seq])?;
            self.any_supplied = true;
        }
        {
            let mut stmt = self
                .conn
                .prepare_cached("INSERT INTO deliveries (sink, seq) VALUES (?1, ?2)")?;
            for sink in &targets {
                stmt.execute(params![sink, seq])?;
            }
        }
        for sink in targets {
            self.sinks.entry(sink).or_default().pending += 1;
            self.dirty.insert(sink);
            self.to_wake.insert(sink);
        }
        self.events += 1;
        self.bytes += len;
        self.counts_dirty = true;
        Ok(Ok(Appended {
            id: event.id,
            duplicate: false,
            stored: true,
        }))
    }

    /// Removes the oldest event of a local application with everything that refers to it, or
    /// the oldest of edgehook's own events (`BUILT_IN_TYPES`: the device's lifecycle and
    /// inventory) when no local application's is left. False when there is none.
    fn drop_oldest(&mut self) -> rusqlite::Result<bool> {
        // The statement below names one parameter for each of edgehook's own types.
        const _: () = assert!(crate::event::BUILT_IN_TYPES.len() == 5);
        let own = rusqlite::params_from_iter(crate::event::BUILT_IN_TYPES);
        let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
        let mut oldest: Option<(i64, String, String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, id, type, length(body) FROM events
                 WHERE type NOT IN (?1, ?2, ?3, ?4, ?5) ORDER BY seq LIMIT 1",
            )?
            .query_row(own, row)
            .optional()?;
        if oldest.is_none() {
            oldest = self
                .conn
                .prepare_cached(
                    "SELECT seq, id, type, length(body) FROM events ORDER BY seq LIMIT 1",
                )?
                .query_row([], row)
                .optional()?;
        }
        let Some((seq, id, event_type, len)) = oldest else {
            return Ok(false);
        };
        let sink_ids: Vec<SinkId> = self.sinks.keys().copied().collect();
        for sink in sink_ids {
            let d = self
                .conn
                .prepare_cached("DELETE FROM deliveries WHERE sink = ?1 AND seq = ?2")?
                .execute(params![sink, seq])?;
            let dl = self
                .conn
                .prepare_cached("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2")?
                .execute(params![sink, seq])?;
            if d + dl > 0 {
                let row = self.sinks.entry(sink).or_default();
                row.pending -= d as i64;
                row.dead -= dl as i64;
                self.dirty.insert(sink);
            }
        }
        self.forget_event(seq, len)?;
        self.lose(
            Reason::OutboxFull,
            Some(Named {
                id,
                event_type,
                sink: None,
            }),
        );
        Ok(true)
    }

    // The statements on the delivery path avoid `RETURNING`: SQLite runs such a statement
    // through a temporary table and a statement journal, which cost more than a plain read
    // by primary key beside a plain write.

    /// An event's references and stored length.
    fn refs_and_len(&mut self, seq: i64) -> rusqlite::Result<Option<(i64, i64)>> {
        self.conn
            .prepare_cached("SELECT refs, length(body) FROM events WHERE seq = ?1")?
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    /// Whether the event stored under `event`'s producer-given id is the same event (its
    /// type and data as stored, `event::same_event`); `None` when no event has that id.
    fn supplied_match(&mut self, event: &crate::event::NewEvent) -> rusqlite::Result<Option<bool>> {
        self.conn
            .prepare_cached(
                "SELECT e.type, e.body FROM supplied_ids s JOIN events e ON e.seq = s.seq
                 WHERE s.id = ?1",
            )?
            .query_row([&event.id], |r| {
                Ok(r.get_ref(0)?.as_str()? == event.event_type
                    && crate::event::same_event(r.get_ref(1)?.as_blob()?, &event.body))
            })
            .optional()
    }

    fn forget_event(&mut self, seq: i64, len: i64) -> rusqlite::Result<()> {
        if self.any_supplied {
            self.conn
                .prepare_cached(
                    "DELETE FROM supplied_ids
                     WHERE id = (SELECT id FROM events WHERE seq = ?1) AND seq = ?1",
                )?
                .execute([seq])?;
        }
        self.conn
            .prepare_cached("DELETE FROM events WHERE seq = ?1")?
            .execute([seq])?;
        self.events -= 1;
        self.bytes -= len;
        self.counts_dirty = true;
        Ok(())
    }

    /// Drops one reference to an event; deletes it when none is left.
    fn unref(&mut self, seq: i64) -> rusqlite::Result<()> {
        match self.refs_and_len(seq)? {
            Some((refs, len)) if refs <= 1 => self.forget_event(seq, len),
            Some(_) => self
                .conn
                .prepare_cached("UPDATE events SET refs = refs - 1 WHERE seq = ?1")?
                .execute([seq])
                .map(drop),
            None => Ok(()),
        }
    }

    /// The sink's next `limit` deliveries after `after`, in order (see `FETCH_DELIVERIES`), up
    /// to the one that brings their bodies to `FETCH_BYTES`.
    fn fetch(&mut self, sink: SinkId, after: i64, limit: usize) -> rusqlite::Result<Vec<Delivery>> {
        let mut stmt = self.conn.prepare_cached(FETCH_DELIVERIES)?;
        let mut rows = stmt.query(params![sink, after])?;
        let mut fetched = Fetched::default();
        for _ in 0..limit {
            if fetched.body_bytes() >= FETCH_BYTES {
                break;
            }
            let Some(r) = rows.next()? else { break };
            let added = fetched.push(
                r.get(0)?,
                r.get(1)?,
                r.get_ref(2)?.as_str()?,
                r.get_ref(3)?.as_str()?,
                r.get_ref(4)?.as_blob()?,
                r.get(5)?,
            );
            if !added {
                break;
            }
        }
        Ok(fetched.finish())
    }

    fn report(&mut self, report: Report) -> rusqlite::Result<()> {
        match report {
            Report::Delivered {
                sink,
                seq,
                at_ms,
                measured,
            } => self.delivered(sink, seq, at_ms, measured)?,
            Report::DeliveredMany { sink, at_ms, done } => {
                self.delivered_many(sink, at_ms, &done)?
            }
            Report::Failed {
                sink,
                seq,
                at_ms,
                error,
                state,
                measured,
            } => {
                self.record_attempt(sink, seq, at_ms, "retry", Some(measured), Some(&error))?;
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET attempts = attempts + 1 WHERE sink = ?1 AND seq = ?2",
                    )?
                    .execute(params![sink, seq])?;
                let row = self.sinks.entry(sink).or_default();
                row.failed_attempts += 1;
                row.last_error = Some(error);
                row.last_error_ms = Some(at_ms);
                row.state = Some(state);
                self.dirty.insert(sink);
            }
            Report::Dead {
                sink,
                seq,
                at_ms,
                reason,
                attempts,
                measured,
            } => {
                self.bury(sink, seq, at_ms, &reason, attempts, measured)?;
                let row = self.sinks.entry(sink).or_default();
                row.last_error = Some(reason);
                row.last_error_ms = Some(at_ms);
                self.dirty.insert(sink);
            }
            Report::Trouble { sink, at_ms, error } => {
                let row = self.sinks.entry(sink).or_default();
                row.last_error = Some(error);
                row.last_error_ms = Some(at_ms);
                row.state = Some(SinkState::BackingOff);
                self.dirty.insert(sink);
            }
            Report::State { sink, state } => {
                self.sinks.entry(sink).or_default().state = Some(state);
                self.dirty.insert(sink);
            }
        }
        Ok(())
    }

    /// Records that the receiver took one delivery.
    fn delivered(
        &mut self,
        sink: SinkId,
        seq: i64,
        at_ms: i64,
        measured: Measured,
    ) -> rusqlite::Result<()> {
        self.record_attempt(sink, seq, at_ms, "delivered", Some(measured), None)?;
        let d = self
            .conn
            .prepare_cached("DELETE FROM deliveries WHERE sink = ?1 AND seq = ?2")?
            .execute(params![sink, seq])?;
        // Expired or dropped while in flight: it arrived after all.
        let dl = if d == 0 {
            self.conn
                .prepare_cached("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2")?
                .execute(params![sink, seq])?
        } else {
            0
        };
        let row = self.sinks.entry(sink).or_default();
        row.pending -= d as i64;
        row.dead -= dl as i64;
        row.delivered += 1;
        row.last_success_ms = Some(at_ms);
        row.state = Some(SinkState::Active);
        self.dirty.insert(sink);
        if d + dl > 0 {
            self.unref(seq)?;
        }
        Ok(())
    }

    /// Moves a delivery to the dead letters, keeping at most `max_dead_letters` per sink.
    fn bury(
        &mut self,
        sink: SinkId,
        seq: i64,
        at_ms: i64,
        reason: &str,
        attempts: u32,
        measured: Option<Measured>,
    ) -> rusqlite::Result<()> {
        self.record_attempt(sink, seq, at_ms, "dead", measured, Some(reason))?;
        let d = self
            .conn
            .prepare_cached("DELETE FROM deliveries WHERE sink = ?1 AND seq = ?2")?
            .execute(params![sink, seq])?;
        if d == 0 {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (sink, seq, attempts, reason, dead_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![sink, seq, attempts, reason, at_ms + self.offset_ms])?;
        if reason == EXPIRED {
            let named = self.named(sink, seq)?;
            self.lose(Reason::Expired, named);
        }
        let row = self.sinks.entry(sink).or_default();
        row.pending -= 1;
        row.dead += 1;
        self.dirty.insert(sink);
        let over = row.dead - self.limits.max_dead_letters as i64;
        if over > 0 {
            let oldest: Vec<i64> = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM dead_letters WHERE sink = ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![sink, over], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for old in oldest {
                self.forget_dead(sink, old, Reason::DeadLettersFull)?;
            }
        }
        Ok(())
    }

    /// Moves the chosen dead letters back to their sinks' queues, attempts reset.
    fn redeliver(&mut self, which: &Redeliver) -> rusqlite::Result<Redelivered> {
        let rows: Vec<(SinkId, String, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT d.sink, s.name, d.seq, e.id FROM dead_letters d
                 JOIN sinks s ON s.id = d.sink JOIN events e ON e.seq = d.seq
                 WHERE ?1 IS NULL OR s.name = ?1 ORDER BY d.seq",
            )?
            .query_map(params![which.sink], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut done = Redelivered::default();
        if let Some(ids) = &which.ids {
            done.missing = ids
                .iter()
                .filter(|id| !rows.iter().any(|r| &r.3 == *id))
                .cloned()
                .collect();
        }
        for (sink, name, seq, id) in rows {
            if which.ids.as_ref().is_some_and(|ids| !ids.contains(&id)) {
                continue;
            }
            self.conn
                .prepare_cached("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2")?
                .execute(params![sink, seq])?;
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO deliveries (sink, seq) VALUES (?1, ?2)")?
                .execute(params![sink, seq])?;
            // A fresh `max_age`, or an expired dead letter would expire again at once.
            self.conn
                .prepare_cached("UPDATE events SET created_ms = ?2 WHERE seq = ?1")?
                .execute(params![seq, super::now_ms() + self.offset_ms])?;
            let row = self.sinks.entry(sink).or_default();
            row.dead -= 1;
            row.pending += 1;
            self.dirty.insert(sink);
            self.to_wake.insert(sink);
            done.count += 1;
            if !done.sinks.contains(&name) {
                done.sinks.push(name);
            }
        }
        Ok(done)
    }

    /// Adds one row to the activity history (only while the delivery is still there, so a
    /// late report about an event already gone adds nothing).
    fn record_attempt(
        &mut self,
        sink: SinkId,
        seq: i64,
        at_ms: i64,
        outcome: &str,
        measured: Option<Measured>,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        // `OR FAIL`, as in `delivered::record_batch_attempts`: an insert from a select may
        // insert many rows as far as SQLite knows, so with `ABORT` (the default) it keeps a
        // statement journal to undo half of one; no constraint of `attempts` can fail, and a
        // failing statement fails the whole transaction anyway.
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT OR FAIL INTO attempts (at_ms, sink, event_id, event_type, outcome, code, latency_ms, error)
                 SELECT ?1, ?2, e.id, e.type, ?3, ?4, ?5, ?6 FROM events e WHERE e.seq = ?7",
            )?
            .execute(params![
                at_ms,
                sink,
                outcome,
                measured.and_then(|m| m.code),
                measured.map(|m| m.latency_ms as i64),
                error,
                seq
            ])?;
        let id = (inserted == 1).then(|| self.conn.last_insert_rowid());
        if let Some(id) = id.filter(|id| id % 1000 == 0) {
            self.conn
                .prepare_cached("DELETE FROM attempts WHERE id <= ?1")?
                .execute([id - ACTIVITY_KEEP])?;
        }
        Ok(())
    }

    /// Counts a loss (`losses`), to be logged once the batch commits.
    fn lose(&mut self, reason: Reason, named: Option<Named>) {
        self.lost.add(reason, named);
        self.counts_dirty = true;
    }

    /// The event `seq` and sink `sink` as a loss is logged, when it will be one by one.
    fn named(&mut self, sink: SinkId, seq: i64) -> rusqlite::Result<Option<Named>> {
        if !self.lost.room() {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "SELECT e.id, e.type, s.name FROM events e, sinks s WHERE e.seq = ?1 AND s.id = ?2",
            )?
            .query_row(params![seq, sink], |r| {
                Ok(Named {
                    id: r.get(0)?,
                    event_type: r.get(1)?,
                    sink: Some(r.get(2)?),
                })
            })
            .optional()
    }

    /// Removes a dead letter for `reason`, counted and logged as lost.
    fn forget_dead(&mut self, sink: SinkId, seq: i64, reason: Reason) -> rusqlite::Result<()> {
        let named = self.named(sink, seq)?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2")?
            .execute(params![sink, seq])?;
        if n > 0 {
            self.sinks.entry(sink).or_default().dead -= 1;
            self.dirty.insert(sink);
            self.unref(seq)?;
            self.lose(reason, named);
        }
        Ok(())
    }

    fn expire(&mut self, now_ms: i64) -> rusqlite::Result<()> {
        if self.nothing_to_expire() {
            return Ok(());
        }
        let cutoff = now_ms
            .saturating_add(self.offset_ms)
            .saturating_sub(crate::config::units::millis_i64(self.limits.max_age));
        let old: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT seq FROM events WHERE created_ms < ?1 ORDER BY created_ms LIMIT 10000",
            )?
            .query_map([cutoff], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let sink_ids: Vec<SinkId> = self.sinks.keys().copied().collect();
        for seq in old {
            for &sink in &sink_ids {
                let attempts: Option<u32> = self
                    .conn
                    .prepare_cached("SELECT attempts FROM deliveries WHERE sink = ?1 AND seq = ?2")?
                    .query_row(params![sink, seq], |r| r.get(0))
                    .optional()?;
                if let Some(attempts) = attempts {
                    self.bury(sink, seq, now_ms, EXPIRED, attempts, None)?;
                }
            }
        }
        let stale: Vec<(SinkId, i64)> = self
            .conn
            .prepare_cached("SELECT sink, seq FROM dead_letters WHERE dead_ms < ?1")?
            .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (sink, seq) in stale {
            self.forget_dead(sink, seq, Reason::DeadLetterExpired)?;
        }
        Ok(())
    }

    fn set_routes(&mut self, routes: Vec<Route>) -> rusqlite::Result<Vec<SinkId>> {
        let mut ids = Vec::with_capacity(routes.len());
        for route in &routes {
            self.conn.execute(
                "INSERT INTO sinks (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [&route.spec.name],
            )?;
            let id: SinkId = self.conn.query_row(
                "SELECT id FROM sinks WHERE name = ?1",
                [&route.spec.name],
                |r| r.get(0),
            )?;
            self.sinks.entry(id).or_default();
            ids.push(id);
        }
        self.routes = ids.iter().copied().zip(routes).collect();
        Ok(ids)
    }

    /// Whether `write_counters` has anything to write.
    fn counters_unwritten(&self) -> bool {
        self.saved_offset_ms != Some(self.offset_ms) || self.counts_dirty || !self.dirty.is_empty()
    }

    fn write_counters(&mut self) -> rusqlite::Result<()> {
        if self.saved_offset_ms != Some(self.offset_ms) {
            meta_set(&self.conn, "clock_offset_ms", self.offset_ms)?;
            self.saved_offset_ms = Some(self.offset_ms);
        }
        if self.counts_dirty {
            let mut stmt = self
                .conn
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            stmt.execute(params!["event_count", self.events])?;
            stmt.execute(params!["event_bytes", self.bytes])?;
            stmt.execute(params!["dropped", self.lost.dropped])?;
            stmt.execute(params!["expired", self.lost.expired])?;
            stmt.execute(params!["dead_letters_trimmed", self.lost.trimmed])?;
            self.counts_dirty = false;
        }
        for id in std::mem::take(&mut self.dirty) {
            let row = &self.sinks[&id];
            self.conn
                .prepare_cached(
                    "UPDATE sinks SET pending = ?2, delivered = ?3, failed_attempts = ?4, dead = ?5,
                     state = coalesce(?6, state), last_success_ms = ?7, last_error = ?8, last_error_ms = ?9
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    row.pending,
                    row.delivered,
                    row.failed_attempts,
                    row.dead,
                    row.state.map(SinkState::as_str),
                    row.last_success_ms,
                    row.last_error,
                    row.last_error_ms
                ])?;
        }
        Ok(())
    }
}

/// Whether `batch` holds delivery reports and nothing else (nothing a caller waits for).
fn only_reports(batch: &[Command]) -> bool {
    batch.iter().all(|c| matches!(c, Command::Report(_)))
}

/// Gives the memory of a busy spell back to the system once the outbox is quiet: SQLite's page
/// cache, the free memory glibc's allocator keeps in every thread's arena, and the daemon's
/// mappings of the code it ran (`memory::give_back`); otherwise a device's RSS would stay at its
/// busiest long after a drain. Called from the daemon's timers (`status` every 10 s), so it
/// costs an idle daemon no wake-up of its own.
fn give_back(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA shrink_memory");
    let released = crate::memory::give_back();
    log::debug!(
        "At rest: gave back the mappings of {} KiB of code",
        released / 1024
    );
}

/// Whether a batch of delivery reports should wait a little for more. While a sink drains,
/// its reports come several at a time (or, delivering one at a time, one after another:
/// `draining`) and every commit rewrites the same few pages, so gathering them divides the
/// bytes written and the work per event. A lone report of a quiet sink, or a batch with
/// anything a caller waits for, is committed at once, so a quiet sink's delivery is recorded
/// as soon as it happens. Reports are counted by the deliveries they hold.
fn wait_for_more_reports(batch: &[Command], waited: Duration, draining: bool) -> bool {
    if !only_reports(batch) || waited >= REPORTS_WAIT {
        return false;
    }
    let deliveries: usize = batch
        .iter()
        .map(|c| match c {
            Command::Report(r) => r.weight(),
            _ => 1,
        })
        .sum();
    (deliveries >= REPORTS_BUSY || draining) && deliveries < REPORTS_TOGETHER
}

fn parse_state(s: &str) -> SinkState {
    match s {
        "backing-off" => SinkState::BackingOff,
        "gone" => SinkState::Gone,
        _ => SinkState::Active,
    }
}
