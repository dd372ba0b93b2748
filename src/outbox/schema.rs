//! Opening the outbox file: pragmas, the versioned schema, and moving aside a file that
//! SQLite cannot read.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;
use crate::config::Durability;

/// The size SQLite truncates the WAL back to when it starts it over after a checkpoint
/// (`journal_size_limit`), and the most it is left at once every sink's queue is drained
/// (`Store::shrink_wal_when_drained`): SPEC §13.
pub(super) const WAL_LIMIT: u64 = 4 * 1024 * 1024;

/// How long the writer waits for a lock another connection holds.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The schema this edgehook writes.
pub const SCHEMA_VERSION: i64 = 3;

/// What version 2 added: the bounded history of attempts behind `edgehook activity`, and an
/// index by age, since a redelivered dead letter is younger than its neighbours.
const ATTEMPTS: &str = "
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    sink INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code INTEGER,
    latency_ms INTEGER,
    error TEXT
);
CREATE INDEX events_by_age ON events (created_ms);
";

/// Version 3: no index over every event id. Random UUIDs spread its entries over the whole
/// index, so each insert and each delete dirtied a page of its own: with a large backlog one
/// 4 KiB page written per event, and reads that miss the cache. Only the ids producers give
/// need looking up (a second event with one is a duplicate); they get a table of their own.
const SUPPLIED_IDS: &str = "
CREATE TABLE supplied_ids (id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
";

/// The events table of version 3 (created as `events`, or as `events_v3` while migrating).
const EVENTS: &str = "(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    refs INTEGER NOT NULL
);";

/// From version 2: the events table rebuilt without its unique index on `id`; every id
/// already stored is kept as a supplied one (which ids producers gave is not known), and the
/// sequence carries on where it was.
const TO_V3: &str = "
CREATE TABLE events_v3 {EVENTS}
INSERT INTO events_v3 SELECT seq, id, type, body, created_ms, refs FROM events;
INSERT INTO supplied_ids SELECT id, seq FROM events;
CREATE TEMP TABLE kept_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'events';
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
DELETE FROM sqlite_sequence WHERE name = 'events';
INSERT INTO sqlite_sequence (name, seq) SELECT 'events', seq FROM kept_sequence;
DROP TABLE kept_sequence;
CREATE INDEX events_by_age ON events (created_ms);
";

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE events {EVENTS}
CREATE TABLE sinks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pending INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active',
    last_success_ms INTEGER,
    last_error TEXT,
    last_error_ms INTEGER
);
CREATE TABLE deliveries (
    sink INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE TABLE dead_letters (
    sink INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_ms INTEGER NOT NULL,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
";

/// A damaged outbox file that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where the file went (`<name>.corrupt-<unix time>`; its -wal and -shm beside it).
    pub to: PathBuf,
    /// What was wrong with it.
    pub why: String,
}

/// Opens (or creates) the outbox for writing. A file SQLite cannot read is renamed to
/// `<name>.corrupt-<unix time>` (with its -wal and -shm) and a fresh outbox started; the
/// returned value says so. Only cheap checks run at open (the header, and SQLite's own
/// reading of the schema), so start-up stays fast with a large backlog; a file marked by
/// `mark_for_check` (corruption met while running) gets a full `quick_check` first.
pub fn open_rw(
    path: &Path,
    durability: Durability,
) -> Result<(Connection, Option<MovedAside>), StoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(path, e))?;
        }
    }
    let marker = check_marker(path);
    // Checked before SQLite opens the file, because SQLite may reset or delete a -wal it
    // cannot use, and that -wal belongs with the damaged file.
    let damage = if marker.exists() {
        full_check(path)
    } else {
        super::header::damage(path)
    };
    let mut moved = match damage {
        Some(why) => Some(MovedAside {
            to: move_aside(path)?,
            why,
        }),
        None => None,
    };
    let conn = match try_open(path, durability) {
        Ok(conn) => conn,
        Err(StoreError::Sqlite { source, .. }) if moved.is_none() && unreadable(&source) => {
            moved = Some(MovedAside {
                to: move_aside(path)?,
                why: source.to_string(),
            });
            try_open(path, durability)?
        }
        Err(e) => return Err(e),
    };
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| StoreError::io(&marker, e))?;
    }
    Ok((conn, moved))
}

/// Opens an existing outbox read-only (for `status` and other commands that work while the
/// daemon runs or not). `None` when there is no outbox yet.
pub fn open_ro(path: &Path) -> Result<Option<Connection>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::sqlite(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StoreError::sqlite(path, e))?;
    check_version(&conn, path)?;
    Ok(Some(conn))
}

/// Marks the outbox for a full check at the next start: SQLite reported corruption while
/// running, which the cheap checks at open may not see.
pub fn mark_for_check(path: &Path) -> std::io::Result<()> {
    std::fs::write(
        check_marker(path),
        b"SQLite reported corruption while running\n",
    )
}

/// `<name>.needs-check`, beside the outbox.
fn check_marker(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".needs-check");
    PathBuf::from(p)
}

/// What a full `quick_check` finds wrong, if anything.
fn full_check(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match rows {
        Ok(rows) if rows == ["ok"] => None,
        Ok(rows) => Some(format!(
            "quick_check: {}",
            rows.join("; ").lines().collect::<Vec<_>>().join("; ")
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// Whether SQLite's error means the file is not a readable database.
pub(super) fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| StoreError::io(path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut side_aside = aside.as_os_str().to_owned();
        side_aside.push(suffix);
        let _ = std::fs::rename(side, side_aside);
    }
    Ok(aside)
}

/// Keeps the outbox to the user the daemon runs as: a new file is created 0600, and an
/// existing one, or its `-wal` and `-shm` (which SQLite creates with the file's mode), loses
/// its group and other bits. Every event is in them, and the socket's group is every emitter.
fn keep_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(StoreError::io(path, e));
        }
        _ => {}
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o077 != 0 {
            let private = std::fs::Permissions::from_mode(mode & 0o700);
            std::fs::set_permissions(&file, private).map_err(|e| StoreError::io(&file, e))?;
        }
    }
    Ok(())
}

fn try_open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let err = |e| StoreError::sqlite(path, e);
    keep_private(path)?;
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite {
            path: path.to_owned(),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = {WAL_LIMIT};"
    ))
    .map_err(err)?;
    let version = check_version(&conn, path)?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(err)?;
        if tables != 0 {
            return Err(StoreError::Foreign(path.to_owned()));
        }
        let schema = SCHEMA.replace("{EVENTS}", EVENTS);
        conn.execute_batch(&format!(
            "BEGIN; {schema} {ATTEMPTS} {SUPPLIED_IDS} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(err)?;
        return Ok(conn);
    }
    if version == 1 {
        conn.execute_batch(&format!(
            "BEGIN; {ATTEMPTS} PRAGMA user_version = 2; COMMIT;"
        ))
        .map_err(err)?;
    }
    if version <= 2 {
        let to_v3 = TO_V3.replace("{EVENTS}", EVENTS);
        conn.execute_batch(&format!(
            "BEGIN; {SUPPLIED_IDS} {to_v3} PRAGMA user_version = 3; COMMIT;"
        ))
        .map_err(err)?;
    }
    Ok(conn)
}

fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
        });
    }
    Ok(version)
}
