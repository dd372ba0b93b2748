//! The range of every duration and size the config holds (docs/configuration.md names each
//! beside its key). A value outside its range is a problem at the value's position, so no
//! configured value reaches the daemon's arithmetic too large or too small to mean anything.

use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::file::{ConfigFile, SinkFile};
use super::units::{Size, Span};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const TIB: u64 = 1024 * 1024 * MIB;

/// `storage.max_age`: from a second (tests and demos) to ten years.
pub(super) const MAX_AGE: (Duration, Duration) = (SECOND, Duration::from_secs(3650 * 86_400));
/// `storage.max_bytes`: one small event's room to a terabyte.
pub(super) const MAX_BYTES: (u64, u64) = (4 * KIB, TIB);
/// `storage.max_events`.
pub(super) const MAX_EVENTS: (u64, u64) = (1, 100_000_000);
/// `storage.max_dead_letters`, per sink.
pub(super) const MAX_DEAD_LETTERS: (u64, u64) = (1, 100_000_000);
/// `ingest.max_event_bytes`: SPEC §7's 1 MiB at most.
pub(super) const MAX_EVENT_BYTES: (u64, u64) = (256, MIB);
/// `ingest.max_connections`: a file descriptor each, and a count tokio's semaphore holds on a
/// 32-bit device too; at least 2, as no uid may hold more than half of them.
pub(super) const MAX_CONNECTIONS: (u64, u64) = (2, 65_536);
/// `ingest.idle_timeout`.
pub(super) const IDLE_TIMEOUT: (Duration, Duration) = (SECOND, DAY);
/// `inventory.interval`.
pub(super) const INTERVAL: (Duration, Duration) = (SECOND, Duration::from_secs(30 * 86_400));
/// `inventory.script_timeout`.
pub(super) const SCRIPT_TIMEOUT: (Duration, Duration) = (Duration::from_millis(10), DAY);
/// `daemon.shutdown_timeout`: the shipped unit's `TimeoutStopSec` is 20 s.
pub(super) const SHUTDOWN_TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), HOUR);
/// A sink's `timeout`.
pub(super) const TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), DAY);
/// A sink's `retry.initial` and `retry.max`.
pub(super) const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), DAY);
/// An MQTT sink's `keep_alive`: MQTT carries it in whole seconds, in 16 bits.
pub(super) const KEEP_ALIVE: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(u16::MAX as u64));

/// Reports each duration and size of the sections (not the sinks) outside its range.
pub(super) fn check_section_ranges(c: &mut Checker<'_>, raw: &ConfigFile) {
    let s = &raw.storage;
    duration(c, &s.max_age, "max_age", MAX_AGE);
    size(c, &s.max_bytes, "max_bytes", MAX_BYTES);
    count(c, &s.max_events, "max_events", MAX_EVENTS);
    count(c, &s.max_dead_letters, "max_dead_letters", MAX_DEAD_LETTERS);
    size(
        c,
        &raw.ingest.max_event_bytes,
        "max_event_bytes",
        MAX_EVENT_BYTES,
    );
    count(
        c,
        &raw.ingest.max_connections,
        "max_connections",
        MAX_CONNECTIONS,
    );
    duration(c, &raw.ingest.idle_timeout, "idle_timeout", IDLE_TIMEOUT);
    duration(c, &raw.inventory.interval, "interval", INTERVAL);
    duration(
        c,
        &raw.inventory.script_timeout,
        "script_timeout",
        SCRIPT_TIMEOUT,
    );
    duration(
        c,
        &raw.daemon.shutdown_timeout,
        "shutdown_timeout",
        SHUTDOWN_TIMEOUT,
    );
}

/// Reports each duration of sink `s` outside its range (`keep_alive` of an MQTT sink only:
/// an HTTP sink refuses the key).
pub(super) fn check_sink_ranges(c: &mut Checker<'_>, s: &SinkFile, is_mqtt: bool) {
    duration(c, &s.timeout, "timeout", TIMEOUT);
    duration(c, &s.retry.initial, "retry.initial", BACKOFF);
    duration(c, &s.retry.max, "retry.max", BACKOFF);
    if let Some(k) = s.keep_alive.as_ref().filter(|_| is_mqtt) {
        duration(c, k, "keep_alive", KEEP_ALIVE);
    }
}

fn duration(c: &mut Checker<'_>, v: &Spanned<Span>, key: &str, (lo, hi): (Duration, Duration)) {
    if !(lo..=hi).contains(&v.get_ref().0) {
        let (lo, hi) = (show_duration(lo), show_duration(hi));
        c.at(v, format!("`{key}` must be between {lo} and {hi}"));
    }
}

fn size(c: &mut Checker<'_>, v: &Spanned<Size>, key: &str, (lo, hi): (u64, u64)) {
    if !(lo..=hi).contains(&v.get_ref().0) {
        let (lo, hi) = (show_size(lo), show_size(hi));
        c.at(v, format!("`{key}` must be between {lo} and {hi}"));
    }
}

fn count<T: Copy + Into<u64>>(
    c: &mut Checker<'_>,
    v: &Spanned<T>,
    key: &str,
    (lo, hi): (u64, u64),
) {
    if !(lo..=hi).contains(&(*v.get_ref()).into()) {
        c.at(v, format!("`{key}` must be between {lo} and {hi}"));
    }
}

/// `d` in the largest unit that writes it whole, as the config file would: `10ms`, `5s`, `1d`.
fn show_duration(d: Duration) -> String {
    let units = [(DAY, "d"), (HOUR, "h"), (Duration::from_secs(60), "m")];
    let unit = units
        .into_iter()
        .chain([(SECOND, "s"), (MS, "ms")])
        .find(|(u, _)| d.as_nanos() % u.as_nanos() == 0);
    match unit {
        Some((u, name)) => format!("{}{name}", d.as_nanos() / u.as_nanos()),
        None => format!("{}ns", d.as_nanos()),
    }
}

/// `n` bytes in the largest binary unit that writes it whole: `256`, `4KiB`, `1TiB`.
fn show_size(n: u64) -> String {
    let units = [
        (TIB, "TiB"),
        (1024 * MIB, "GiB"),
        (MIB, "MiB"),
        (KIB, "KiB"),
    ];
    match units.into_iter().find(|(u, _)| n >= *u && n % u == 0) {
        Some((u, name)) => format!("{}{name}", n / u),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_shown_as_a_config_file_writes_them() {
        assert_eq!(show_duration(MAX_AGE.1), "3650d");
        assert_eq!(show_duration(Duration::from_millis(10)), "10ms");
        assert_eq!(show_duration(KEEP_ALIVE.1), "65535s");
        assert_eq!(show_duration(HOUR), "1h");
        assert_eq!(show_size(MAX_EVENT_BYTES.0), "256");
        assert_eq!(show_size(MAX_EVENT_BYTES.1), "1MiB");
        assert_eq!(show_size(MAX_BYTES.1), "1TiB");
    }
}
