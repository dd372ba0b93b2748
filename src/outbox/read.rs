//! Reading the outbox from outside the daemon (`status`, `dead-letters`): plain queries on a
//! read-only connection, served from the counters the store keeps, never from table scans.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// What `status` reads from the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    /// The device id kept in the outbox.
    pub device_id: Option<String>,
    /// The device's lifecycle status, when one was set.
    pub device_status: Option<String>,
    /// Events stored.
    pub events: i64,
    /// Bytes of stored event bodies.
    pub event_bytes: i64,
    /// Events dropped to make room.
    pub dropped: i64,
    /// Events expired by `max_age` (each became a dead letter).
    pub expired: i64,
    /// Dead letters removed (past `max_age` or over `max_dead_letters`).
    pub dead_letters_trimmed: i64,
    /// Every sink the outbox has a queue for.
    pub sinks: Vec<SinkReport>,
}

/// One sink's queue as the outbox holds it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// The sink's name.
    pub name: String,
    /// The persisted state (`active`, `backing-off`, `gone`).
    pub state: String,
    /// Deliveries waiting.
    pub pending: i64,
    /// When the oldest pending event entered the outbox (Unix ms).
    pub oldest_pending_ms: Option<i64>,
    /// Deliveries done.
    pub delivered: i64,
    /// Failed attempts.
    pub failed_attempts: i64,
    /// Dead letters kept.
    pub dead_letters: i64,
    /// Last delivery (Unix ms).
    pub last_success_ms: Option<i64>,
    /// Last error text.
    pub last_error: Option<String>,
    /// When the last error happened (Unix ms).
    pub last_error_ms: Option<i64>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The sink.
    pub sink: String,
    /// The event id.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// Why it was given up on.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up on (Unix ms).
    pub dead_ms: i64,
}

/// The wall clock's jumps the daemon saw (see `clock`): stored ages are in wall time plus
/// this, and are turned back into wall time here.
fn clock_offset(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta(conn, "clock_offset_ms")?.unwrap_or(0))
}

fn meta<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Reads the report in one read transaction, so the numbers agree with each other.
pub fn read_report(conn: &Connection) -> rusqlite::Result<OutboxReport> {
    conn.execute_batch("BEGIN")?;
    let report = read_inside(conn);
    let _ = conn.execute_batch("COMMIT");
    report
}

fn read_inside(conn: &Connection) -> rusqlite::Result<OutboxReport> {
    let mut stmt = conn.prepare(
        "SELECT id, name, state, pending, delivered, failed_attempts, dead, last_success_ms, last_error, last_error_ms
         FROM sinks ORDER BY name",
    )?;
    let mut oldest = conn.prepare(
        "SELECT e.created_ms FROM deliveries d JOIN events e ON e.seq = d.seq
         WHERE d.sink = ?1 ORDER BY d.seq LIMIT 1",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            SinkReport {
                name: r.get(1)?,
                state: r.get(2)?,
                pending: r.get(3)?,
                oldest_pending_ms: None,
                delivered: r.get(4)?,
                failed_attempts: r.get(5)?,
                dead_letters: r.get(6)?,
                last_success_ms: r.get(7)?,
                last_error: r.get(8)?,
                last_error_ms: r.get(9)?,
            },
        ))
    })?;
    let mut sinks = Vec::new();
    let offset = clock_offset(conn)?;
    for row in rows {
        let (id, mut sink) = row?;
        sink.oldest_pending_ms = oldest
            .query_row(params![id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|ms| ms - offset);
        sinks.push(sink);
    }
    Ok(OutboxReport {
        device_id: meta(conn, "device_id")?,
        device_status: meta(conn, "device_status")?,
        events: meta(conn, "event_count")?.unwrap_or(0),
        event_bytes: meta(conn, "event_bytes")?.unwrap_or(0),
        dropped: meta(conn, "dropped")?.unwrap_or(0),
        expired: meta(conn, "expired")?.unwrap_or(0),
        dead_letters_trimmed: meta(conn, "dead_letters_trimmed")?.unwrap_or(0),
        sinks,
    })
}

/// One attempt in the activity history.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityRow {
    /// When the attempt ended (Unix ms).
    pub at_ms: i64,
    /// The sink.
    pub sink: String,
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// `delivered`, `retry` or `dead`.
    pub outcome: String,
    /// The HTTP status or MQTT reason code, when there was an answer.
    pub code: Option<u16>,
    /// How long the attempt took (none for an expiry).
    pub latency_ms: Option<i64>,
    /// What went wrong.
    pub error: Option<String>,
}

/// The latest `limit` attempts, newest first, of one sink or all. Ordered by when each attempt
/// ended, not by when its report reached the outbox: reports of different sinks' threads can
/// arrive out of order (seen under qemu on a loaded machine). The table holds at most about
/// `ACTIVITY_KEEP` rows, so the sort is bounded.
pub fn activity(
    conn: &Connection,
    sink: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<ActivityRow>> {
    let mut stmt = conn.prepare(
        "SELECT a.at_ms, s.name, a.event_id, a.event_type, a.outcome, a.code, a.latency_ms, a.error
         FROM attempts a JOIN sinks s ON s.id = a.sink
         WHERE ?1 IS NULL OR s.name = ?1
         ORDER BY a.at_ms DESC, a.id DESC LIMIT ?2",
    )?;
    stmt.query_map(params![sink, limit as i64], |r| {
        Ok(ActivityRow {
            at_ms: r.get(0)?,
            sink: r.get(1)?,
            event_id: r.get(2)?,
            event_type: r.get(3)?,
            outcome: r.get(4)?,
            code: r.get(5)?,
            latency_ms: r.get(6)?,
            error: r.get(7)?,
        })
    })?
    .collect()
}

/// The dead letters of one sink or all, oldest first.
pub fn dead_letters(conn: &Connection, sink: Option<&str>) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare(
        "SELECT s.name, e.id, e.type, d.reason, d.attempts, d.dead_ms
         FROM dead_letters d JOIN sinks s ON s.id = d.sink JOIN events e ON e.seq = d.seq
         WHERE ?1 IS NULL OR s.name = ?1
         ORDER BY s.name, d.seq",
    )?;
    let offset = clock_offset(conn)?;
    stmt.query_map(params![sink], |r| {
        Ok(DeadLetter {
            sink: r.get(0)?,
            id: r.get(1)?,
            event_type: r.get(2)?,
            reason: r.get(3)?,
            attempts: r.get(4)?,
            dead_ms: r.get::<_, i64>(5)? - offset,
        })
    })?
    .collect()
}
