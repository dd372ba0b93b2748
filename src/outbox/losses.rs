//! What the outbox lets go of: events dropped to make room (`drop-oldest`), deliveries
//! expired by `max_age` (they become dead letters) and dead letters trimmed (past `max_age`,
//! or over `max_dead_letters`). Each is counted, the counts kept in `meta` with the other
//! counters, and logged at WARN with the event's id and type, the sink and the reason as
//! journald fields once its transaction has committed. The lines are bounded: at most
//! `NAMED_PER_WINDOW` name an event in any `WINDOW`; the losses past that are summed up in one
//! line per reason when the window ends. A mass expiry comes both as one sweep and as a
//! trickle of single reports from the sinks that had the events read ahead, so a bound per
//! transaction alone would not hold it. A part of `store`, kept apart to be read on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Losses logged one by one in a window; the rest are summed up.
pub(super) const NAMED_PER_WINDOW: usize = 100;

/// How long a window of logged losses lasts.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// Why an event or a dead letter went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reason {
    /// `drop-oldest` made room for a new event.
    OutboxFull,
    /// Undelivered after `max_age`: it is now a dead letter.
    Expired,
    /// A dead letter older than `max_age`: removed.
    DeadLetterExpired,
    /// A sink's dead letters over `max_dead_letters`: the oldest removed.
    DeadLettersFull,
}

impl Reason {
    /// The journald field `REASON`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::OutboxFull => "outbox-full",
            Reason::Expired => "expired",
            Reason::DeadLetterExpired => "dead-letter-expired",
            Reason::DeadLettersFull => "dead-letters-full",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Reason::OutboxFull => "Outbox full: dropped the oldest event to make room",
            Reason::Expired => {
                "Event undelivered after `max_age`: expired, it is now a dead letter"
            }
            Reason::DeadLetterExpired => "Removed a dead letter older than `max_age`",
            Reason::DeadLettersFull => {
                "Removed the oldest dead letter of a sink over `max_dead_letters`"
            }
        }
    }
}

/// The event a loss concerns, as it is logged.
#[derive(Debug, Clone)]
pub(super) struct Named {
    pub(super) id: String,
    pub(super) event_type: String,
    /// The sink, for a dead letter.
    pub(super) sink: Option<String>,
}

/// The counts of losses since the outbox was created, and what is still to be logged.
#[derive(Debug, Clone, Default)]
pub(super) struct Lost {
    /// Events dropped by `drop-oldest`.
    pub(super) dropped: i64,
    /// Deliveries expired by `max_age` (one per sink the event waited for).
    pub(super) expired: i64,
    /// Dead letters removed (past `max_age` or over `max_dead_letters`).
    pub(super) trimmed: i64,
    /// This transaction's losses to log one by one.
    named: Vec<(Reason, Named)>,
    /// The window's other losses, by reason.
    unnamed: BTreeMap<Reason, u64>,
    /// When the window began: at the first loss after the last one ended.
    window: Option<Instant>,
    /// Losses of the window named so far.
    named_in_window: usize,
}

impl Lost {
    /// The counts kept in `meta`, nothing to log yet.
    pub(super) fn counted(dropped: i64, expired: i64, trimmed: i64) -> Lost {
        Lost {
            dropped,
            expired,
            trimmed,
            ..Lost::default()
        }
    }

    /// Whether the next loss is logged one by one (so its event is worth naming).
    pub(super) fn room(&self) -> bool {
        self.named_in_window < NAMED_PER_WINDOW
    }

    /// Whether losses wait for their window to end to be summed up: the outbox asks to be
    /// woken again (`Published::set_expirable`) so that the line comes.
    pub(super) fn waiting(&self) -> bool {
        !self.unnamed.is_empty()
    }

    /// Counts a loss, named when `room` said so.
    pub(super) fn add(&mut self, reason: Reason, named: Option<Named>) {
        match reason {
            Reason::OutboxFull => self.dropped += 1,
            Reason::Expired => self.expired += 1,
            Reason::DeadLetterExpired | Reason::DeadLettersFull => self.trimmed += 1,
        }
        self.window.get_or_insert_with(Instant::now);
        match named.filter(|_| self.room()) {
            Some(named) => {
                self.named.push((reason, named));
                self.named_in_window += 1;
            }
            None => *self.unnamed.entry(reason).or_default() += 1,
        }
    }

    /// Logs the transaction's named losses, and sums up the window's others once it has
    /// ended (`now` set: at once). Called once the transaction has committed: a rolled-back
    /// one restores the `Lost` of its snapshot, so what it lost is neither counted nor logged.
    pub(super) fn log(&mut self, now: bool) {
        for (reason, n) in self.named.drain(..) {
            let (id, t, why) = (n.id.as_str(), n.event_type.as_str(), reason.as_str());
            match &n.sink {
                Some(sink) => {
                    log::warn!(event_id = id, event_type = t, sink = sink.as_str(), reason = why;
                        "{}: event {id} ({t}) of sink {sink}", reason.what())
                }
                None => {
                    log::warn!(event_id = id, event_type = t, reason = why;
                        "{}: event {id} ({t})", reason.what())
                }
            }
        }
        let ended = self.window.is_some_and(|w| w.elapsed() >= WINDOW);
        if !(ended || now) {
            return;
        }
        for (reason, count) in std::mem::take(&mut self.unnamed) {
            log::warn!(count = count, reason = reason.as_str();
                "{}: {count} more, not logged one by one", reason.what());
        }
        self.window = None;
        self.named_in_window = 0;
    }
}
