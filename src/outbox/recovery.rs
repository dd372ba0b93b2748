//! How the outbox thread meets faults: a damaged file found while running, a full disk, and
//! the age clock it starts (see `clock`). A part of `store`, kept apart to be read on its own.

use super::{Report, Snapshot, Store, UNRECORDED_KEEP, meta_get};
use crate::outbox::{clock, schema};

impl Store {
    /// Starts the age clock with the offset kept, never letting it run back behind the
    /// newest event (a device that booted with an older clock than it stopped with).
    pub(super) fn start_clock(&mut self) -> rusqlite::Result<()> {
        let kept: Option<i64> = meta_get(&self.conn, "clock_offset_ms")?;
        self.saved_offset_ms = kept;
        let newest: Option<i64> =
            self.conn
                .query_row("SELECT max(created_ms) FROM events", [], |r| r.get(0))?;
        let wall = crate::outbox::now_ms();
        let mut offset = kept.unwrap_or(0);
        if let Some(newest) = newest.filter(|&n| wall + offset < n) {
            log::warn!(
                "The clock is behind the newest stored event by {} s; event ages continue from that event",
                (newest - wall - offset) / 1000
            );
            offset = newest - wall;
        }
        clock::start(offset);
        self.offset_ms = offset;
        Ok(())
    }

    /// Remembers an error that says the file is damaged, or the disk full.
    pub(super) fn notice(&mut self, e: &rusqlite::Error) {
        if schema::unreadable(e) {
            self.corrupt = Some(e.to_string());
        }
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            self.no_space = true;
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        (
            self.events,
            self.bytes,
            self.lost.clone(),
            self.sinks.clone(),
            self.decommissioned,
        )
    }

    pub(super) fn roll_back(&mut self, snapshot: Snapshot) {
        let _ = self.conn.execute_batch("ROLLBACK");
        (
            self.events,
            self.bytes,
            self.lost,
            self.sinks,
            self.decommissioned,
        ) = snapshot;
        self.dirty.clear();
        self.to_wake.clear();
        self.saved_offset_ms = None;
    }

    /// Records delivery reports in a transaction of their own, after a batch failed for want
    /// of space: they mostly delete rows, and lost they would leave delivered events holding
    /// the space that new events wait for (until a restart sent them again).
    pub(super) fn record_alone(&mut self, reports: Vec<Report>) {
        if reports.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        let done = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            for r in &reports {
                self.report(r.clone())?;
            }
            self.write_counters()?;
            self.conn.execute_batch("COMMIT")
        });
        if let Err(e) = done {
            self.roll_back(snapshot);
            self.keep_unrecorded(reports, Some(&e));
        }
    }

    /// Keeps reports for the next batch (bounded by the deliveries they report on: past the
    /// bound, those deliveries are made again after a restart, which at-least-once allows).
    pub(super) fn keep_unrecorded(
        &mut self,
        mut reports: Vec<Report>,
        e: Option<&rusqlite::Error>,
    ) {
        let mut room = UNRECORDED_KEEP.saturating_sub(self.unrecorded_deliveries);
        let mut fit = 0;
        while fit < reports.len() && reports[fit].weight() <= room {
            room -= reports[fit].weight();
            fit += 1;
        }
        if fit < reports.len() {
            let lost: usize = reports[fit..].iter().map(Report::weight).sum();
            let e = e.map_or("no space".to_string(), |e| e.to_string());
            log::warn!(path:% = self.path.display(); "Reports of {lost} deliveries could not be recorded on the full disk ({e}); those events will be sent again after a restart");
            reports.truncate(fit);
        }
        self.unrecorded_deliveries += reports.iter().map(Report::weight).sum::<usize>();
        self.unrecorded.extend(reports);
    }

    /// Follows the disk's state, logging when it becomes full and when it has room again,
    /// once each. Room is shown only by a committed batch that stored events, with every kept
    /// report recorded (a batch of reads alone proves nothing).
    pub(super) fn note_space(&mut self, no_space: bool, stored: bool) {
        if no_space && !self.disk_full {
            log::error!(path:% = self.path.display(); "The disk holding the outbox {} is full: new events are refused (code `full`) until space is freed; deliveries go on", self.path.display());
            self.disk_full = true;
        } else if self.disk_full && stored && !no_space && self.unrecorded.is_empty() {
            log::info!(path:% = self.path.display(); "The disk holding the outbox has room again; events are accepted");
            self.disk_full = false;
        }
    }

    /// Ends the process when SQLite finds the file damaged while running: carrying on would
    /// answer every producer with an error and may damage it further. What was committed
    /// stays; what this batch held was not acknowledged. The file is marked so that the next
    /// start (systemd restarts the service) runs a full check and moves it aside if it fails.
    pub(super) fn stop_on_corruption(&mut self, why: &str) -> ! {
        let _ = self.conn.execute_batch("ROLLBACK");
        let marked = match schema::mark_for_check(&self.path) {
            Ok(()) => "it will be checked at the next start".to_string(),
            Err(e) => format!("it could not be marked for a check ({e})"),
        };
        log::error!(path:% = self.path.display(); "The outbox {} is corrupt ({why}); stopping, and {marked}", self.path.display());
        log::logger().flush();
        std::process::exit(74);
    }
}
