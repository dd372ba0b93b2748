//! edgehook keeps every event a device produces in a SQLite outbox and forwards each one as a
//! signed webhook once the device is online. The flow is sources → outbox → sinks.
//!
//! - [`config`]: the TOML file and the drop-in sink files of `sinks.d/`, parsed with serde and
//!   checked in one step that reports every problem as `file:line:col: message`; the secrets
//!   generated for signing sinks given none. Calls nothing else but [`sinks::signing`] to decode
//!   secrets and [`sinks::format`] for the body formats.
//! - [`event`]: the event envelope, serialised once when an event enters the outbox.
//! - [`outbox`]: the SQLite file. One thread owns the connection; everyone else sends it
//!   commands, and commands that arrive together share a transaction (group commit).
//! - [`sources`]: what produces events: the device itself (identity, lifecycle, inventory from
//!   built-ins and Mender-compatible scripts) and the ingest socket local applications write
//!   to, which also carries control requests to the device source.
//! - [`sinks`]: the destinations. Each sink runs on threads of its own (blocking HTTP never
//!   runs on the async runtime); `signing` holds the signature schemes and their verification.
//! - [`daemon`]: wiring, signals, reload, systemd notification and logging.
//! - [`client`]: the blocking socket client used by commands that talk to the daemon.
//! - [`protocol`]: the socket's requests and replies, one set of types for the client and the
//!   server.
//! - [`receiver`]: the verifying webhook receiver behind `edgehook receive` and `edgehook demo`.
//! - [`cli`]: the command line, one file per command, and the exit codes.
//! - [`memory`]: what the daemon gives back to the system at rest (free heap, its hold on the
//!   pages of code it ran).
//! - [`wake`]: the wake-up flag sink threads sleep on.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod event;
pub mod memory;
pub mod outbox;
pub mod protocol;
pub mod receiver;
pub mod sinks;
pub mod sources;
pub mod wake;
