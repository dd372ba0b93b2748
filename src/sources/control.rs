//! Control requests that arrive on the socket beside events (`set-status`, `decommission`,
//! `provision`, `inventory-refresh`) and go to the part of the daemon that owns them.

use tokio::sync::oneshot;

/// What is asked.
#[derive(Debug)]
pub enum Op {
    /// Announce a new device status.
    SetStatus(String),
    /// Stop the sources and refuse local events; the backlog still drains.
    Decommission,
    /// Undo `Decommission`.
    Provision,
    /// Collect the inventory now, and emit it if it changed.
    InventoryRefresh,
    /// Dead letters back to their queues.
    Redeliver(crate::outbox::Redeliver),
    /// Un-pause a sink paused by 410.
    Resume(String),
    /// Read the config files again (the socket's `reload`, as SIGHUP).
    ReloadFiles,
}

/// A refused request: the socket's error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `invalid`, `full`, `decommissioned`, `busy` or `internal`.
    pub code: &'static str,
    /// What to tell the client.
    pub error: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: &'static str, error: impl Into<String>) -> Self {
        Refusal {
            code,
            error: error.into(),
        }
    }

    /// Too many control requests wait already: this one was not queued.
    pub fn busy() -> Self {
        Refusal::new(
            "busy",
            "too many control requests are waiting; nothing was done; try again later",
        )
    }
}

/// The fields of an `{"ok":true, …}` reply, or a refusal.
pub type Answer = Result<crate::protocol::Done, Refusal>;

/// One request with where its answer goes.
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub op: Op,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}
