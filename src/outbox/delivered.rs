//! Recording many deliveries of one sink at once (`Report::DeliveredMany`): a few statements
//! over the whole batch rather than the four or five of `delivered` for each. The batch goes
//! to SQLite once, as JSON read with its `json_each`, into a table of the connection's own
//! (`temp.delivered_batch`) that the statements join with, so that none parses the JSON again
//! or builds a list of its own. A part of `store`, kept apart to be read on its own.
//!
//! SQLite's own work per delivery is about the same either way (BENCHMARKS.md): most of it is
//! the rows each delivery changes. What a batch saves is the work around each report.
//!
//! The statements must leave what one `Delivered` each would leave. They do when every seq of
//! the batch comes once and is found, with its event, in exactly one of the sink's queue and
//! its dead letters: then no delivery of the batch touches another's rows, every one records
//! its attempt and drops one reference to its event. Anything else (a late report of a
//! delivery already gone, a seq reported twice) is recorded one delivery at a time, which is
//! rare enough that nothing is gained by handling it in sets.

use std::fmt::Write;

use rusqlite::{Connection, params};

use super::{ACTIVITY_KEEP, Store};
use crate::outbox::{Measured, SinkId, SinkState};

/// The batch being recorded: each delivery's seq (once), its place in the report, and its
/// attempt; it holds the last batch until the next. A temporary table lives in memory with
/// the connection (`temp_store = MEMORY`), and is written in the transaction like any other.
const BATCH_TABLE: &str = "CREATE TEMP TABLE delivered_batch (
    seq INTEGER PRIMARY KEY,
    pos INTEGER NOT NULL,
    code INTEGER,
    latency_ms INTEGER
)";

/// Most deliveries recorded by one pass of the statements. A delivery's code and latency are
/// read from the batch's JSON by their place in it, a lookup that walks the array, so a long
/// batch is taken in parts; an MQTT window (at most 64) is one or two.
const PART: usize = 32;

/// Creates the connection's table for batches of deliveries.
pub(super) fn create_batch_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(BATCH_TABLE)
}

/// What the outbox holds of a batch of deliveries of one sink, read before anything changes;
/// counted over the batch's different seqs, but for `seqs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::outbox) struct Shape {
    /// Deliveries in the batch.
    pub(in crate::outbox) seqs: i64,
    /// Those still in the sink's queue.
    pub(in crate::outbox) pending: i64,
    /// Those among the sink's dead letters (expired or dropped while in flight).
    pub(in crate::outbox) dead: i64,
    /// Those in exactly one of the queue and the dead letters.
    pub(in crate::outbox) found_once: i64,
    /// Those whose event is stored.
    pub(in crate::outbox) events: i64,
    /// Those that hold the last reference to their event (which goes with them).
    pub(in crate::outbox) last_refs: i64,
    /// The stored bytes of those events.
    pub(in crate::outbox) last_bytes: i64,
}

impl Shape {
    /// Whether the set-based statements record the batch as one `Delivered` each would: each
    /// delivery found once, so also none of them twice in the batch.
    pub(in crate::outbox) fn set_based(&self) -> bool {
        self.found_once == self.seqs && self.events == self.seqs
    }
}

impl Store {
    /// Records that the receiver took `done` (each delivery's seq and attempt, in the order
    /// sent) for `sink`, `PART` deliveries at a time: in a few statements when
    /// `Shape::set_based`, one `delivered` each otherwise. Each part leaves what one
    /// `Delivered` each would, so the whole does.
    pub(super) fn delivered_many(
        &mut self,
        sink: SinkId,
        at_ms: i64,
        done: &[(i64, Measured)],
    ) -> rusqlite::Result<()> {
        for part in done.chunks(PART) {
            let shape = self.shape(sink, part)?;
            if shape.set_based() {
                self.record_batch(sink, at_ms, shape)?;
                continue;
            }
            for &(seq, measured) in part {
                self.delivered(sink, seq, at_ms, measured)?;
            }
        }
        Ok(())
    }

    /// Puts `done` in `temp.delivered_batch` in place of the last batch (each seq once: a
    /// repeat is left out) and reads what the outbox holds of it.
    pub(in crate::outbox) fn shape(
        &self,
        sink: SinkId,
        done: &[(i64, Measured)],
    ) -> rusqlite::Result<Shape> {
        self.conn
            .prepare_cached("DELETE FROM temp.delivered_batch")?
            .execute([])?;
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO temp.delivered_batch (seq, pos, code, latency_ms)
                 SELECT j.value, j.key, ?2 ->> j.key, ?3 ->> j.key FROM json_each(?1) j",
            )?
            .execute(params![
                json_list(done, |s, (seq, _)| write!(s, "{seq}")),
                json_list(done, |s, (_, m)| match m.code {
                    Some(code) => write!(s, "{code}"),
                    None => write!(s, "null"),
                }),
                // As `record_attempt` stores it.
                json_list(done, |s, (_, m)| write!(s, "{}", m.latency_ms as i64)),
            ])?;
        // A sink without dead letters (as its counter says) has none to look for. Were the
        // counter wrong, a dead letter would count as not found and the batch be recorded one
        // delivery at a time, which finds it.
        let any_dead = self.sinks.get(&sink).is_some_and(|row| row.dead != 0);
        self.conn
            .prepare_cached(
                "SELECT sum(in_queue), sum(in_dead), sum(in_queue + in_dead = 1),
                        count(refs), sum(refs <= 1), sum(CASE WHEN refs <= 1 THEN len ELSE 0 END)
                 FROM (SELECT EXISTS (SELECT 1 FROM deliveries d
                                      WHERE d.sink = ?1 AND d.seq = b.seq) AS in_queue,
                              CASE WHEN ?2 THEN EXISTS (SELECT 1 FROM dead_letters l
                                      WHERE l.sink = ?1 AND l.seq = b.seq) ELSE 0 END AS in_dead,
                              e.refs AS refs, length(e.body) AS len
                       FROM temp.delivered_batch b LEFT JOIN events e ON e.seq = b.seq)",
            )?
            .query_row(params![sink, any_dead], |r| {
                // A sum over no rows is NULL.
                let n = |i| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0));
                Ok(Shape {
                    seqs: done.len() as i64,
                    pending: n(0)?,
                    dead: n(1)?,
                    found_once: n(2)?,
                    events: n(3)?,
                    last_refs: n(4)?,
                    last_bytes: n(5)?,
                })
            })
    }

    /// Records the batch in `temp.delivered_batch`, whose `shape` is set-based.
    ///
    /// The multi-row insert and update say `OR FAIL`: none of their constraints can fail (and
    /// a failing statement fails the whole transaction anyway), and for a statement that need
    /// not be undone halfway, as `ABORT` (the default) would, SQLite keeps no statement
    /// journal of the pages it changes.
    fn record_batch(&mut self, sink: SinkId, at_ms: i64, shape: Shape) -> rusqlite::Result<()> {
        self.record_batch_attempts(sink, at_ms)?;
        self.conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE sink = ?1 AND seq IN (SELECT seq FROM temp.delivered_batch)",
            )?
            .execute([sink])?;
        if shape.dead > 0 {
            self.conn
                .prepare_cached(
                    "DELETE FROM dead_letters WHERE sink = ?1 AND seq IN (SELECT seq FROM temp.delivered_batch)",
                )?
                .execute([sink])?;
        }
        // Each delivery drops one reference: events with none left go (as in `forget_event`),
        // the others keep one fewer.
        if shape.last_refs > 0 {
            if self.any_supplied {
                // A departing event's id only where it names that event, as in `forget_event`.
                self.conn
                    .prepare_cached(
                        "DELETE FROM supplied_ids WHERE (id, seq) IN
                         (SELECT id, seq FROM events
                          WHERE seq IN (SELECT seq FROM temp.delivered_batch) AND refs <= 1)",
                    )?
                    .execute([])?;
            }
            self.conn
                .prepare_cached(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM temp.delivered_batch) AND refs <= 1",
                )?
                .execute([])?;
            self.events -= shape.last_refs;
            self.bytes -= shape.last_bytes;
            self.counts_dirty = true;
        }
        if shape.last_refs < shape.seqs {
            self.conn
                .prepare_cached(
                    "UPDATE OR FAIL events SET refs = refs - 1
                     WHERE seq IN (SELECT seq FROM temp.delivered_batch)",
                )?
                .execute([])?;
        }
        let row = self.sinks.entry(sink).or_default();
        row.pending -= shape.pending;
        row.dead -= shape.dead;
        row.delivered += shape.seqs;
        row.last_success_ms = Some(at_ms);
        row.state = Some(SinkState::Active);
        self.dirty.insert(sink);
        Ok(())
    }

    /// Adds a `delivered` row to the activity history for each delivery of the batch, in the
    /// order reported, and trims as `record_attempt` does. The rows take consecutive ids
    /// (SQLite gives a new row one more than the largest id), the ones an insert each would
    /// have taken; each insert whose id is a multiple of 1000 would have trimmed below it, and
    /// those trims together are the one below the last such id.
    fn record_batch_attempts(&mut self, sink: SinkId, at_ms: i64) -> rusqlite::Result<()> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT OR FAIL INTO attempts (at_ms, sink, event_id, event_type, outcome, code, latency_ms, error)
                 SELECT ?1, ?2, e.id, e.type, 'delivered', b.code, b.latency_ms, NULL
                 FROM temp.delivered_batch b JOIN events e ON e.seq = b.seq
                 ORDER BY b.pos",
            )?
            .execute(params![at_ms, sink])? as i64;
        if inserted == 0 {
            return Ok(());
        }
        let last = self.conn.last_insert_rowid();
        let trim_at = last - last.rem_euclid(1000);
        if trim_at > last - inserted {
            self.conn
                .prepare_cached("DELETE FROM attempts WHERE id <= ?1")?
                .execute([trim_at - ACTIVITY_KEEP])?;
        }
        Ok(())
    }
}

/// One value of each of `done`, written by `item`, as a JSON array: `[3,4,7]`.
fn json_list(
    done: &[(i64, Measured)],
    item: impl Fn(&mut String, &(i64, Measured)) -> std::fmt::Result,
) -> String {
    let mut s = String::with_capacity(done.len() * 8 + 2);
    s.push('[');
    for (i, d) in done.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Writing to a String cannot fail.
        let _ = item(&mut s, d);
    }
    s.push(']');
    s
}
