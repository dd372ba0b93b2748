//! The clock that event ages are measured with (`max_age`, and how long dead letters are
//! kept): the wall clock, corrected for the jumps it makes.
//!
//! A Raspberry Pi has no real-time clock: it boots with fake-hwclock's last saved time (or
//! 1970) and NTP later steps the clock forward by hours or days. Measured by the wall clock
//! alone, every event stored before that step would suddenly look that much older and could
//! expire at once; a step backwards would make events look younger than they are. So each
//! reading is compared with the monotonic clock: a wall clock that moved more than `JUMP` apart
//! from it has jumped, and the jump is added to an offset that keeps the ages flowing at the
//! monotonic clock's pace. Stored ages (`created_ms`, `dead_ms`) are in this corrected time;
//! the offset is kept in the outbox, so `status` reads ages the same way.
//!
//! What cannot be seen: a jump while edgehook is stopped looks like time passing, and counts
//! as age (forwards) — except that the clock is never let run backwards across a restart.
//! The monotonic clock stops while the system is suspended, so a suspend counts as no age.
//! Retry timers do not read this clock at all: they sleep on the monotonic clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A step of the wall clock against the monotonic clock larger than this is a jump; NTP's
/// slewing (at most 0.5 ms per second) stays far below it between two readings.
pub const JUMP: Duration = Duration::from_secs(5);

/// Follows the wall clock against the monotonic clock and sums its jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumpTracker {
    wall_ms: i64,
    mono: Duration,
    offset_ms: i64,
}

impl JumpTracker {
    /// A tracker that starts at `wall_ms` and `mono` with `offset_ms` of earlier jumps.
    pub fn new(wall_ms: i64, mono: Duration, offset_ms: i64) -> Self {
        JumpTracker {
            wall_ms,
            mono,
            offset_ms,
        }
    }

    /// Takes a reading of both clocks; returns the corrected time (wall + offset).
    pub fn observe(&mut self, wall_ms: i64, mono: Duration) -> i64 {
        let elapsed = mono.saturating_sub(self.mono).as_millis() as i64;
        let drift = wall_ms - (self.wall_ms + elapsed);
        if drift.abs() > JUMP.as_millis() as i64 {
            self.offset_ms -= drift;
        }
        self.wall_ms = wall_ms;
        self.mono = mono;
        wall_ms + self.offset_ms
    }

    /// The sum of the jumps seen (to add to a wall time).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }
}

static TRACKER: Mutex<Option<(JumpTracker, Instant)>> = Mutex::new(None);

fn with_tracker<T>(f: impl FnOnce(&mut JumpTracker, Duration, i64) -> T) -> T {
    let mut guard = TRACKER.lock().unwrap_or_else(|p| p.into_inner());
    let wall = super::now_ms();
    let (tracker, base) =
        guard.get_or_insert_with(|| (JumpTracker::new(wall, Duration::ZERO, 0), Instant::now()));
    let mono = base.elapsed();
    f(tracker, mono, wall)
}

/// Starts the process's clock with the offset kept in the outbox.
pub fn start(offset_ms: i64) {
    let mut guard = TRACKER.lock().unwrap_or_else(|p| p.into_inner());
    *guard = Some((
        JumpTracker::new(super::now_ms(), Duration::ZERO, offset_ms),
        Instant::now(),
    ));
}

/// The corrected time now (Unix ms), for ages.
pub fn age_now_ms() -> i64 {
    with_tracker(|t, mono, wall| t.observe(wall, mono))
}

/// The offset now (after taking a reading, so a jump just made is in it).
pub fn offset_ms() -> i64 {
    with_tracker(|t, mono, wall| {
        t.observe(wall, mono);
        t.offset_ms()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn jumps_of_the_wall_clock_do_not_count_as_age_and_steady_time_does() {
        let mut t = JumpTracker::new(1_000_000, Duration::ZERO, 0);
        let s = |secs| Duration::from_secs(secs);
        assert_eq!(t.observe(1_060_000, s(60)), 1_060_000, "a minute passes");
        // NTP steps the clock forward by 3 hours, 10 s later.
        assert_eq!(t.observe(1_070_000 + 3 * H, s(70)), 1_070_000);
        assert_eq!(t.offset_ms(), -3 * H);
        assert_eq!(
            t.observe(1_130_000 + 3 * H, s(130)),
            1_130_000,
            "and on at the same pace"
        );
        // Back by 5 hours.
        assert_eq!(t.observe(1_140_000 - 2 * H, s(140)), 1_140_000);
        // Slewing by a second is no jump.
        assert_eq!(t.observe(1_201_000 - 2 * H, s(200)), 1_201_000);
    }
}
