//! The outbox: a SQLite file in WAL mode that holds every event until each of its sinks has
//! taken it. One thread owns the connection (`store`); everyone else sends it commands over a
//! bounded channel. Commands that arrive together share one transaction, so concurrent
//! producers share one fsync (group commit), and a producer is answered only after the commit.

pub mod clock;
mod header;
mod lock;
mod read;
mod schema;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use lock::lock_path;
pub use read::{
    ActivityRow, DeadLetter, OutboxReport, SinkReport, activity, dead_letters, read_report,
};
pub use schema::{MovedAside, SCHEMA_VERSION, mark_for_check, open_ro, open_rw};

use crate::config::{SinkSpec, Storage};
use crate::event::NewEvent;
use crate::wake::Wake;

/// A sink's row id in the outbox.
pub type SinkId = i64;

/// How many commands may wait for the store thread.
const QUEUE: usize = 4096;

/// Bytes of events that may wait for the outbox thread or be in its transaction at once. A
/// producer (`submit`, `append`) takes its event's share before queueing it and the outbox
/// gives it back once it has answered, so a flood waits for commits (the socket stops reading
/// its connections) instead of the queue holding `QUEUE` events of up to `max_event_bytes`
/// each, and no transaction's batch holds more. An event larger than the whole budget takes
/// all of it. 8 MiB is thousands of the small events the loopback benchmark sends (a batch
/// holds at most 2,048 commands anyway) and 128 of 64 KiB: a commit's fsync is shared by
/// enough of them (SPEC §13; `tests/memory_bounds.rs`).
pub const BUDGET: usize = 8 * 1024 * 1024;

/// The most bytes of event bodies one fetch returns, past its first delivery: a fetch stops
/// after the delivery that reaches it, so an event of any size still goes, one at a time. A
/// fetch of small events is bounded by its count (`FETCH` in `sinks`) long before this.
pub const FETCH_BYTES: usize = 2 * 1024 * 1024;

/// An event's share of `BUDGET`, given back when it is dropped (after the answer).
type Share = tokio::sync::OwnedSemaphorePermit;

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed on the file.
    #[error("outbox {path}: {source}")]
    Sqlite {
        /// The outbox file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The file system failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was written by a newer edgehook.
    #[error(
        "outbox {path} has schema version {found}, newer than this edgehook understands ({SCHEMA_VERSION}); upgrade edgehook or move the file away"
    )]
    TooNew {
        /// The outbox file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    /// The file is a SQLite database of something else.
    #[error("{0} is a SQLite database but not an edgehook outbox; refusing to touch it")]
    Foreign(PathBuf),
    /// Another process writes the outbox: a daemon, or an offline command (`lock`).
    #[error("outbox {} is held by another edgehook process ({}); only one may write it", .path.display(), .pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")))]
    Held {
        /// The outbox file.
        path: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The store thread is gone.
    #[error("the outbox is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why an event was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// `when_full = "reject-new"` and a bound is reached (or the event alone exceeds `max_bytes`).
    #[error("the outbox is full")]
    Full,
    /// The device is decommissioned: local applications' events are refused.
    #[error("the device is decommissioned")]
    Decommissioned,
    /// The producer's id is already in the outbox with another type or data; nothing was
    /// stored.
    #[error("an event with this id is already in the outbox with another type or data")]
    Conflict,
    /// The disk holding the outbox is full; nothing was stored.
    #[error("the disk holding the outbox is full")]
    NoSpace,
    /// The write failed; nothing was stored.
    #[error("storage error: {0}")]
    Storage(String),
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event id.
    pub id: String,
    /// The id was already in the outbox; nothing new was stored.
    pub duplicate: bool,
    /// Kept for at least one sink (false when no sink wants its type).
    pub stored: bool,
}

/// One event bound for one sink, as a sink fetches it.
///
/// Its id, type and body are parts of two buffers that every delivery of one fetch shares
/// (`Fetched`), so a fetch allocates twice rather than three times for each delivery. Those
/// allocations are the outbox thread's and are freed on the sink's: glibc frees a block into
/// the arena it came from, under that arena's lock, so three frees a delivery had the sink and
/// the outbox thread waiting for each other's lock and waking each other through the kernel,
/// a few dozen times a window (BENCHMARKS.md, "How the figures got here"). A delivery kept
/// (retried, backing off) keeps its fetch's buffers: at most `FETCH_BYTES` and one event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Outbox order.
    pub seq: i64,
    /// When the event entered the outbox (Unix ms on the age clock, `clock::age_now_ms`).
    pub created_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The ids and types of the fetch.
    text: Arc<str>,
    /// The stored bytes of the fetch.
    bodies: Arc<[u8]>,
    /// Where the id ends in `text` (it starts at `id_at`), and then the type.
    id_at: u32,
    type_at: u32,
    type_end: u32,
    /// Where the body is in `bodies`.
    body_at: u32,
    body_end: u32,
}

impl Delivery {
    /// A delivery on buffers of its own.
    #[cfg(test)]
    pub(crate) fn new(
        seq: i64,
        id: &str,
        event_type: &str,
        body: &[u8],
        created_ms: i64,
        attempts: u32,
    ) -> Self {
        let mut fetched = Fetched::default();
        assert!(fetched.push(seq, attempts, id, event_type, body, created_ms));
        fetched.finish().pop().expect("one delivery")
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.text[self.id_at as usize..self.type_at as usize]
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.text[self.type_at as usize..self.type_end as usize]
    }

    /// The stored bytes.
    pub fn body(&self) -> &[u8] {
        &self.bodies[self.body_at as usize..self.body_end as usize]
    }
}

/// The deliveries of one fetch while they are read: every id and type in one string, every
/// body in one buffer, each made shared once at the end (`finish`).
#[derive(Default)]
pub(crate) struct Fetched {
    rows: Vec<(i64, i64, u32, [u32; 5])>,
    text: String,
    bodies: Vec<u8>,
}

impl Fetched {
    /// Adds a delivery; false (and nothing added) when its offsets would pass 4 GiB. A fetch
    /// stops at `FETCH_BYTES`, and SQLite holds no value over 1 GB (`SQLITE_MAX_LENGTH`), so
    /// the first delivery of a fetch always fits.
    pub(crate) fn push(
        &mut self,
        seq: i64,
        attempts: u32,
        id: &str,
        event_type: &str,
        body: &[u8],
        created_ms: i64,
    ) -> bool {
        let text_end = self.text.len() + id.len() + event_type.len();
        if u32::try_from(text_end.max(self.bodies.len() + body.len())).is_err() {
            return false;
        }
        // Every offset is at most the ends checked above.
        let at = |len: usize| len as u32;
        let id_at = at(self.text.len());
        self.text.push_str(id);
        let type_at = at(self.text.len());
        self.text.push_str(event_type);
        let type_end = at(self.text.len());
        let body_at = at(self.bodies.len());
        self.bodies.extend_from_slice(body);
        let body_end = at(self.bodies.len());
        self.rows.push((
            seq,
            created_ms,
            attempts,
            [id_at, type_at, type_end, body_at, body_end],
        ));
        true
    }

    /// The bytes of the bodies added so far.
    pub(crate) fn body_bytes(&self) -> usize {
        self.bodies.len()
    }

    /// The deliveries, in the order added.
    pub(crate) fn finish(self) -> Vec<Delivery> {
        let text: Arc<str> = Arc::from(self.text);
        let bodies: Arc<[u8]> = Arc::from(self.bodies);
        self.rows
            .into_iter()
            .map(
                |(seq, created_ms, attempts, [id_at, type_at, type_end, body_at, body_end])| {
                    Delivery {
                        seq,
                        created_ms,
                        attempts,
                        text: Arc::clone(&text),
                        bodies: Arc::clone(&bodies),
                        id_at,
                        type_at,
                        type_end,
                        body_at,
                        body_end,
                    }
                },
            )
            .collect()
    }
}

/// The persisted state of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkState {
    /// Delivering, or waiting for work.
    Active,
    /// The last attempt failed; waiting to retry.
    BackingOff,
    /// The receiver answered 410; paused until reload or `resume`.
    Gone,
}

impl SinkState {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Active => "active",
            SinkState::BackingOff => "backing-off",
            SinkState::Gone => "gone",
        }
    }
}

/// What one attempt measured, for the activity history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measured {
    /// The HTTP status or MQTT reason code, when there was an answer.
    pub code: Option<u16>,
    /// How long the attempt took.
    pub latency_ms: u64,
}

/// What a sink tells the outbox about a delivery.
#[derive(Debug, Clone)]
pub enum Report {
    /// The receiver took it.
    Delivered {
        /// Sink.
        sink: SinkId,
        /// Delivery.
        seq: i64,
        /// When (Unix ms).
        at_ms: i64,
        /// The attempt.
        measured: Measured,
    },
    /// Several deliveries of one sink the receiver took, in the order they were sent: the same
    /// as one `Delivered` each, recorded together.
    DeliveredMany {
        /// Sink.
        sink: SinkId,
        /// When (Unix ms).
        at_ms: i64,
        /// Each delivery's seq and its attempt.
        done: Vec<(i64, Measured)>,
    },
    /// An attempt failed; the delivery stays.
    Failed {
        /// Sink.
        sink: SinkId,
        /// Delivery.
        seq: i64,
        /// When (Unix ms).
        at_ms: i64,
        /// What went wrong.
        error: String,
        /// The sink's state now.
        state: SinkState,
        /// The attempt.
        measured: Measured,
    },
    /// The delivery is given up on.
    Dead {
        /// Sink.
        sink: SinkId,
        /// Delivery.
        seq: i64,
        /// When (Unix ms).
        at_ms: i64,
        /// Why (`expired`, `rejected: 400 …`).
        reason: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt, when one led to this (not for `expired`).
        measured: Option<Measured>,
    },
    /// The sink's state changed without an attempt (for example resumed).
    State {
        /// Sink.
        sink: SinkId,
        /// New state.
        state: SinkState,
    },
    /// The sink cannot reach its destination (for example a broker refusing the connection);
    /// no delivery was attempted.
    Trouble {
        /// Sink.
        sink: SinkId,
        /// When (Unix ms).
        at_ms: i64,
        /// What went wrong.
        error: String,
    },
}

impl Report {
    /// How many deliveries it reports on: what the outbox counts when it gathers reports into
    /// a commit or keeps them through a full disk. One for every report but `DeliveredMany`.
    fn weight(&self) -> usize {
        match self {
            Report::DeliveredMany { done, .. } => done.len(),
            _ => 1,
        }
    }
}

/// Which dead letters go back to their queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeliver {
    /// Only this sink's (by name); every sink's when `None`.
    pub sink: Option<String>,
    /// These event ids; every dead letter (of `sink`) when `None`.
    pub ids: Option<Vec<String>>,
}

/// What `Redeliver` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redelivered {
    /// Dead letters put back.
    pub count: usize,
    /// The sinks whose queues got them back (by name).
    pub sinks: Vec<String>,
    /// Ids asked for that are not dead letters (of `sink`).
    pub missing: Vec<String>,
}

/// A sink as the outbox routes to it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The sink's config.
    pub spec: Arc<SinkSpec>,
    /// Raised when deliveries for it are committed.
    pub wake: Arc<Wake>,
}

/// Totals for systemd's `STATUS=` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events stored.
    pub events: i64,
    /// Deliveries pending over all sinks.
    pub pending: i64,
    /// Dead letters over all sinks.
    pub dead: i64,
    /// Events dropped to make room.
    pub dropped: i64,
}

/// A fact about the device the outbox keeps, so that a restart neither forgets nor repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// `provisioned` or `decommissioned`.
    Lifecycle,
    /// The last status announced by `device-status-changed` (or implied by the lifecycle).
    Status,
    /// The last inventory emitted, as the JSON of its attribute list.
    Inventory,
}

impl Fact {
    fn key(self) -> &'static str {
        match self {
            Fact::Lifecycle => "lifecycle",
            Fact::Status => "device_status",
            Fact::Inventory => "inventory",
        }
    }
}

/// The lifecycle value of a decommissioned device.
pub const DECOMMISSIONED: &str = "decommissioned";

/// A change of a kept fact and the event announcing it, stored in one transaction: the event
/// is stored only when the fact changes, and the fact changes only when the event is stored.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The fact.
    pub fact: Fact,
    /// Its new value.
    pub value: String,
    /// Change it only when it was never set (the first start's `device-provisioned`).
    pub only_if_unset: bool,
    /// Change it only when some sink takes the event: an announcement no sink wanted is
    /// made again later (after a sink is added), rather than counted as made.
    pub only_if_stored: bool,
    /// Other facts set along with it.
    pub also: Vec<(Fact, String)>,
    /// The event announcing the change.
    pub event: NewEvent,
}

/// The device facts found when the outbox was opened.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    /// `provisioned` or `decommissioned`; `None` before the first `device-provisioned`.
    pub lifecycle: Option<String>,
    /// The last announced status.
    pub status: Option<String>,
    /// The id of the device's authentication set (generated once, like the device id).
    pub auth_set_id: String,
    /// When the outbox, and so the device as edgehook knows it, was created (Unix ms).
    pub created_ms: i64,
}

enum Command {
    /// An event with its share of `BUDGET` (none from `append_blocking`).
    Append(
        NewEvent,
        Option<Share>,
        oneshot::Sender<Result<Appended, AppendError>>,
    ),
    Transition(
        Transition,
        oneshot::Sender<Result<Option<Appended>, AppendError>>,
    ),
    Fetch {
        sink: SinkId,
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Delivery>, String>>,
    },
    Report(Report),
    Routes(Vec<Route>, oneshot::Sender<Result<Vec<SinkId>, String>>),
    Expire(i64, oneshot::Sender<()>),
    Redeliver(Redeliver, oneshot::Sender<Result<Redelivered, String>>),
    Totals(oneshot::Sender<Totals>),
}

impl Command {
    /// Whether its reply tells a producer or an operator that something is kept.
    fn acknowledges(&self) -> bool {
        !matches!(
            self,
            Command::Report(_) | Command::Fetch { .. } | Command::Expire(..) | Command::Totals(_)
        )
    }
}

/// What opening the outbox found.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The device id: from the config, or the one kept in the outbox (generated on first use).
    pub device_id: String,
    /// Where a damaged file was moved and why, when one was.
    pub moved_aside: Option<MovedAside>,
    /// The outbox was created now.
    pub created: bool,
    /// What the outbox keeps about the device.
    pub facts: DeviceFacts,
}

/// A handle to the outbox thread; cheap to clone. The thread ends when every handle is gone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Command>,
    published: Arc<Published>,
    /// Bytes of `BUDGET` not taken by an event waiting for its answer.
    budget: Arc<tokio::sync::Semaphore>,
}

/// What the outbox thread publishes after each batch, for the daemon's timers to read without
/// waking it: at rest (nothing committed since they last asked, the memory of the last busy
/// spell given back, nothing that can expire) a timer then has nothing to ask, and the outbox
/// thread sleeps; the status timer stops until `busy_again`. On a board every wake-up of a
/// thread that has slept costs many times its work (its caches and TLB are cold), so each one
/// left out shows in the CPU time at rest.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// Transactions committed (or rolled back: what they were to change was tried).
    commits: AtomicU64,
    /// The outbox holds events or dead letters, so an `expire` may have work.
    expirable: AtomicBool,
    /// The memory of the last busy spell is given back, and only timers came since.
    rested: AtomicBool,
    /// Notified when the outbox stops being at rest (`rested` goes false).
    busy_again: tokio::sync::Notify,
}

impl Published {
    pub(crate) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn set_expirable(&self, expirable: bool) {
        self.expirable.store(expirable, Ordering::Release);
    }

    pub(crate) fn set_rested(&self, rested: bool) {
        let was = self.rested.swap(rested, Ordering::AcqRel);
        if was && !rested {
            // Kept for a waiter to come if none waits (`Notify` keeps one).
            self.busy_again.notify_one();
        }
    }
}

impl Outbox {
    /// Opens the outbox described by `storage` and starts its thread.
    pub fn open(
        storage: &Storage,
        configured_device_id: Option<&str>,
    ) -> Result<(Outbox, Opened, JoinHandle<()>), StoreError> {
        let (store, opened) = store::Store::open(storage, configured_device_id)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let published = Arc::new(Published::default());
        let theirs = Arc::clone(&published);
        let thread = std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || store.run(rx, &theirs))
            .map_err(|e| StoreError::io(&storage.path, e))?;
        let budget = Arc::new(tokio::sync::Semaphore::new(BUDGET));
        Ok((
            Outbox {
                tx,
                published,
                budget,
            },
            opened,
            thread,
        ))
    }

    /// How many transactions the outbox thread has run: while it stays the same, so do the
    /// totals.
    pub fn commits(&self) -> u64 {
        self.published.commits.load(Ordering::Acquire)
    }

    /// Whether an `expire` may have work: the outbox holds events or dead letters.
    pub fn may_expire(&self) -> bool {
        self.published.expirable.load(Ordering::Acquire)
    }

    /// Whether the outbox is at rest: the memory of its last busy spell is given back, and
    /// only the daemon's timers came since.
    pub fn at_rest(&self) -> bool {
        self.published.rested.load(Ordering::Acquire)
    }

    /// Resolves once the outbox is no longer at rest (at once if it stopped being at rest
    /// since the last call).
    pub async fn busy_again(&self) {
        self.published.busy_again.notified().await;
    }

    /// Waits for `event`'s share of `BUDGET`; `None` once the outbox is closed.
    async fn share(&self, event: &NewEvent) -> Option<Share> {
        // At least one byte, so an empty body waits its turn too; at most the whole budget.
        let bytes = event.body.len().clamp(1, BUDGET) as u32;
        self.budget.clone().acquire_many_owned(bytes).await.ok()
    }

    /// Stores an event; resolves once it is committed (or refused).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let (reply, rx) = oneshot::channel();
        let share = self.share(&event).await;
        self.tx
            .send(Command::Append(event, share, reply))
            .await
            .map_err(|_| AppendError::Storage("the outbox is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(AppendError::Storage("the outbox is closed".into())))
    }

    /// Queues an event for storing and returns where its answer will arrive, so one client can
    /// have many events in flight (and in one commit) without waiting for each. Waits first for
    /// the event's share of `BUDGET`.
    pub async fn submit(
        &self,
        event: NewEvent,
    ) -> oneshot::Receiver<Result<Appended, AppendError>> {
        let (reply, rx) = oneshot::channel();
        let share = self.share(&event).await;
        // If the outbox is closed the reply sender is dropped and the receiver reports it.
        let _ = self.tx.send(Command::Append(event, share, reply)).await;
        rx
    }

    /// Applies `t`: when its fact changes, stores its event and the new value together.
    /// Resolves to the stored event, or `None` when nothing changed.
    pub async fn transition(&self, t: Transition) -> Result<Option<Appended>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Transition(t, reply))
            .await
            .map_err(|_| AppendError::Storage("the outbox is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(AppendError::Storage("the outbox is closed".into())))
    }

    /// Stores an event from a plain thread, waiting for its answer: one event at a time, so
    /// it takes no share of `BUDGET`.
    pub fn append_blocking(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Append(event, None, reply))
            .map_err(|_| AppendError::Storage("the outbox is closed".into()))?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(AppendError::Storage("the outbox is closed".into())))
    }

    /// The next deliveries of `sink` after `after`, in outbox order (from a sink's thread).
    pub fn fetch_blocking(
        &self,
        sink: SinkId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Fetch {
                sink,
                after,
                limit,
                reply,
            })
            .map_err(|_| "the outbox is closed".to_string())?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the outbox is closed".into()))
    }

    /// Asks for the next deliveries of `sink` after `after`, in outbox order (from async code),
    /// and returns the answer to come, so a sink can go on delivering what it holds while the
    /// outbox reads ahead.
    pub async fn ask_fetch(
        &self,
        sink: SinkId,
        after: i64,
        limit: usize,
    ) -> Result<impl Future<Output = Result<Vec<Delivery>, String>> + use<>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Fetch {
                sink,
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| "the outbox is closed".to_string())?;
        Ok(async {
            rx.await
                .unwrap_or_else(|_| Err("the outbox is closed".into()))
        })
    }

    /// Tells the outbox how a delivery went (from a sink's thread).
    pub fn report_blocking(&self, report: Report) {
        // A closed outbox means the daemon is stopping; the delivery is then retried after the
        // restart, which is the at-least-once contract.
        let _ = self.tx.blocking_send(Command::Report(report));
    }

    /// Tells the outbox how a delivery went (from async code).
    pub async fn report(&self, report: Report) {
        let _ = self.tx.send(Command::Report(report)).await;
    }

    /// Sets the sinks new events are routed to; returns their ids, in the same order
    /// (from a plain thread).
    pub fn set_routes_blocking(&self, routes: Vec<Route>) -> Result<Vec<SinkId>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Routes(routes, reply))
            .map_err(|_| "the outbox is closed".to_string())?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the outbox is closed".into()))
    }

    /// Turns deliveries of events older than `max_age` (as of `now_ms`) into dead letters and
    /// ages out old dead letters.
    pub async fn expire(&self, now_ms: i64) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Expire(now_ms, reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Puts dead letters back in their queues, with their attempts reset (from a plain
    /// thread).
    pub fn redeliver_blocking(&self, which: Redeliver) -> Result<Redelivered, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Redeliver(which, reply))
            .map_err(|_| "the outbox is closed".to_string())?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the outbox is closed".into()))
    }

    /// Counts for the service status line.
    pub async fn totals(&self) -> Option<Totals> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Totals(reply)).await.ok()?;
        rx.await.ok()
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
